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
    signals: list[Signal] = [Signal(LOCK_REASON_SIGNAL[request.lock_reason])]

    known: set[str] | None = set(ctx.known_device_ids) if ctx.known_device_ids is not None else None
    if last is not None and last.device_id is not None:
        known = (known or set()) | {last.device_id}
    if ctx.device_id is None or known is None:
        signals.append(Signal(SignalCode.UNKNOWN_DEVICE))
    elif ctx.device_id not in known:
        signals.append(Signal(SignalCode.NEW_DEVICE))

    here = ctx.geo
    there = last.geo if last is not None else None
    if here is None or there is None or here.country is None or there.country is None:
        signals.append(Signal(SignalCode.UNKNOWN_LOCATION))
    elif here.country.upper() != there.country.upper():
        signals.append(Signal(SignalCode.UNUSUAL_LOCATION))

    if here is not None and there is not None and last is not None and last.at is not None:
        distance = great_circle_km(here, there)
        if distance is not None and distance >= t.impossible_travel_min_km:
            hours = (now - last.at).total_seconds() / _HOUR
            if hours <= 0 or distance / hours > t.impossible_travel_kmh:
                signals.append(Signal(SignalCode.IMPOSSIBLE_TRAVEL))

    if ctx.network is None or ctx.network is Network.UNKNOWN:
        signals.append(Signal(SignalCode.UNKNOWN_NETWORK))
    elif ctx.network in RISKY_NETWORKS:
        signals.append(Signal(SignalCode.RISKY_NETWORK, network=ctx.network))

    if _within_hours(ctx.sim_swap_at, now, t.recent_sim_swap_hours):
        signals.append(Signal(SignalCode.RECENT_SIM_SWAP))
    if _within_hours(ctx.credential_changed_at, now, t.recent_credential_change_hours):
        signals.append(Signal(SignalCode.RECENT_CREDENTIAL_CHANGE))
    if history.recent_unlock_requests >= t.velocity_threshold:
        signals.append(Signal(SignalCode.REQUEST_VELOCITY))
    if history.recent_failed_verifications >= t.failed_verifications_threshold:
        signals.append(Signal(SignalCode.RECENT_FAILED_VERIFICATIONS))

    created = ctx.account_created_at
    if (
        created is not None
        and (now - created).total_seconds() >= t.long_standing_account_days * 24 * _HOUR
    ):
        signals.append(Signal(SignalCode.LONG_STANDING_ACCOUNT))
    return tuple(signals)
