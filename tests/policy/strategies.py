"""Hypothesis strategies for arbitrary unlock requests, account facts and histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from policy.model import (
    AccountFacts,
    ConsentState,
    GeoPoint,
    LastLogin,
    LinkedIdentity,
    Locale,
    LockReason,
    Method,
    Network,
    PhoneOnFile,
    RequestContext,
    RequestHistory,
    TotpState,
    UnlockRequestFacts,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

countries = st.sampled_from(["CN", "US", "DE", "JP", "BR"])
geo_points = st.builds(
    GeoPoint,
    country=st.none() | countries,
    lat=st.none() | st.floats(-90, 90, allow_nan=False),
    lon=st.none() | st.floats(-180, 180, allow_nan=False),
)
moments = st.none() | st.integers(-20 * 365 * 24, 48).map(lambda h: NOW + timedelta(hours=h))
device_ids = st.sampled_from(["d-1", "d-2", "d-3", "d-4"])
contexts = st.builds(
    RequestContext,
    ip=st.just("203.0.113.7"),
    device_id=st.none() | device_ids,
    user_agent=st.none() | st.just("Mozilla/5.0"),
    geo=st.none() | geo_points,
    network=st.none() | st.sampled_from(Network),
    sim_swap_at=moments,
    credential_changed_at=moments,
    account_created_at=moments,
    last_login=st.none()
    | st.builds(
        LastLogin, at=moments, device_id=st.none() | device_ids, geo=st.none() | geo_points
    ),
    known_device_ids=st.none() | st.frozensets(device_ids, max_size=3),
)
requests = st.builds(
    UnlockRequestFacts,
    account_id=st.just("acct-1"),
    lock_reason=st.sampled_from(LockReason),
    context=contexts,
    locale=st.sampled_from(Locale),
)
histories = st.builds(
    RequestHistory,
    recent_unlock_requests=st.integers(0, 10),
    recent_failed_verifications=st.integers(0, 10),
)
accounts = st.builds(
    AccountFacts,
    totp=st.sampled_from(TotpState),
    linked_identities=st.lists(
        st.builds(
            LinkedIdentity,
            provider=st.sampled_from(["wechat", "alipay", "gov-eid"]),
            real_name_verified=st.booleans(),
        ),
        max_size=3,
        unique_by=lambda i: i.provider,
    ).map(tuple),
    recovery_codes_remaining=st.none() | st.integers(0, 10),
    phone=st.none() | st.builds(PhoneOnFile, verified=st.booleans()),
    face_consent=st.sampled_from(ConsentState),
    throttled_methods=st.frozensets(st.sampled_from(Method)),
)
