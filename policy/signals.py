"""Signal derivation: the request's facts and the service's history become risk signals.

Pure and clock-free: ``now`` is an input. A fact that is absent yields an ``UNKNOWN_*`` signal
where it would otherwise have been compared, so missing data never reads as reassurance.
"""

from __future__ import annotations

import math
from datetime import datetime

from policy.config import RISKY_NETWORKS, Policy
from policy.model import (
    LOCK_REASON_SIGNAL,
    GeoPoint,
    Network,
    RequestHistory,
    Signal,
    SignalCode,
    UnlockRequestFacts,
)

EARTH_RADIUS_KM = 6371.0088
_HOUR = 3600.0
_UNKNOWN_NETWORK = Network.UNKNOWN
# Signals without a network are constants: built once here, shared by every decision.
_S = {code: Signal(code) for code in SignalCode}
_LOCK = {reason: _S[code] for reason, code in LOCK_REASON_SIGNAL.items()}
_RISKY = {kind: Signal(SignalCode.RISKY_NETWORK, network=kind) for kind in RISKY_NETWORKS}
(
    _NEW_DEVICE,
    _UNKNOWN_DEVICE,
    _UNUSUAL_LOCATION,
    _UNKNOWN_LOCATION,
    _IMPOSSIBLE_TRAVEL,
    _UNKNOWN_NETWORK_SIGNAL,
    _SIM_SWAP,
    _CREDENTIAL_CHANGE,
    _VELOCITY,
    _FAILED,
    _LONG_STANDING,
) = (
    _S[SignalCode.NEW_DEVICE],
    _S[SignalCode.UNKNOWN_DEVICE],
    _S[SignalCode.UNUSUAL_LOCATION],
    _S[SignalCode.UNKNOWN_LOCATION],
    _S[SignalCode.IMPOSSIBLE_TRAVEL],
    _S[SignalCode.UNKNOWN_NETWORK],
    _S[SignalCode.RECENT_SIM_SWAP],
    _S[SignalCode.RECENT_CREDENTIAL_CHANGE],
    _S[SignalCode.REQUEST_VELOCITY],
    _S[SignalCode.RECENT_FAILED_VERIFICATIONS],
    _S[SignalCode.LONG_STANDING_ACCOUNT],
)


def great_circle_km(a: GeoPoint, b: GeoPoint) -> float | None:
    """Haversine distance, or None when either point lacks coordinates."""
    if a.lat is None or a.lon is None or b.lat is None or b.lon is None:
        return None
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _within_hours(moment: datetime | None, now: datetime, hours: float) -> bool:
    # A timestamp in the future is clock skew at the caller: treat it as recent, not as absent.
    return moment is not None and (now - moment).total_seconds() <= hours * _HOUR


def derive_signals(
    request: UnlockRequestFacts, history: RequestHistory, policy: Policy, now: datetime
) -> tuple[Signal, ...]:
    t = policy.thresholds
    ctx = request.context
    last = ctx.last_login
    signals: list[Signal] = [_LOCK[request.lock_reason]]

    known: set[str] | None = set(ctx.known_device_ids) if ctx.known_device_ids is not None else None
    if last is not None and last.device_id is not None:
        known = (known or set()) | {last.device_id}
    if ctx.device_id is None or known is None:
        signals.append(_UNKNOWN_DEVICE)
    elif ctx.device_id not in known:
        signals.append(_NEW_DEVICE)

    here = ctx.geo
    there = last.geo if last is not None else None
    if here is None or there is None or here.country is None or there.country is None:
        signals.append(_UNKNOWN_LOCATION)
    elif here.country.upper() != there.country.upper():
        signals.append(_UNUSUAL_LOCATION)

    if here is not None and there is not None and last is not None and last.at is not None:
        distance = great_circle_km(here, there)
        if distance is not None and distance >= t.impossible_travel_min_km:
            hours = (now - last.at).total_seconds() / _HOUR
            if hours <= 0 or distance / hours > t.impossible_travel_kmh:
                signals.append(_IMPOSSIBLE_TRAVEL)

    network = ctx.network
    if network is None or network is _UNKNOWN_NETWORK:
        signals.append(_UNKNOWN_NETWORK_SIGNAL)
    elif network in _RISKY:
        signals.append(_RISKY[network])

    if _within_hours(ctx.sim_swap_at, now, t.recent_sim_swap_hours):
        signals.append(_SIM_SWAP)
    if _within_hours(ctx.credential_changed_at, now, t.recent_credential_change_hours):
        signals.append(_CREDENTIAL_CHANGE)
    if history.recent_unlock_requests >= t.velocity_threshold:
        signals.append(_VELOCITY)
    if history.recent_failed_verifications >= t.failed_verifications_threshold:
        signals.append(_FAILED)

    created = ctx.account_created_at
    if (
        created is not None
        and (now - created).total_seconds() >= t.long_standing_account_days * 24 * _HOUR
    ):
        signals.append(_LONG_STANDING)
    return tuple(signals)
