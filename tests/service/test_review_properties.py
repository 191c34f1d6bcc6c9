"""The engine never denies (DESIGN.md principle 2; PIPL-24, GDPR-22(3)): over random flows of
requests, wrong and right proofs, appeals and reviewers' actions, every `denied` request has a
reviewer's `deny` behind it, recorded as a review action and as an audit entry by that reviewer."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from service.methods.totp import code_at
from service.persistence.api_keys import Role
from service.persistence.review_cases import review_actions, review_cases
from service.persistence.tables import unlock_requests
from tests.service.conftest import Api
from tests.service.test_challenges_api import PARAMS, _enrol_totp, _start, _verify, previous_step
from tests.service.test_review_api import _appeal, _audit_events, _case_post, _create

_accounts = itertools.count()

LEVELS = st.sampled_from(["low", "medium", "high", "critical"])
REQUEST = st.integers(min_value=0, max_value=3)
STEP = st.one_of(
    st.tuples(st.just("create"), LEVELS),
    st.tuples(st.just("wrong_proof"), REQUEST),
    st.tuples(st.just("right_proof"), REQUEST),
    st.tuples(st.just("appeal"), REQUEST),
    st.tuples(
        st.just("review"),
        REQUEST,
        st.sampled_from(
            [
                ("approve", "IDENTITY_CONFIRMED"),
                ("deny", "FRAUD_INDICATORS"),
                ("deny", "IDENTITY_NOT_CONFIRMED"),
                ("need_more_info", "EVIDENCE_REQUESTED"),
                ("approve", "FRAUD_INDICATORS"),  # refused: the code does not fit the outcome
            ]
        ),
        st.sampled_from([Role.AGENT, Role.SUPERVISOR]),
    ),
    st.tuples(st.just("confirm"), REQUEST, st.booleans()),
)


def _run(api: Api, steps: list[tuple[Any, ...]]) -> None:
    account = f"acct-prop-{next(_accounts)}"
    secret = _enrol_totp(api, account, at=previous_step())
    requests: list[dict[str, Any]] = []
    for step in steps:
        kind = step[0]
        if kind == "create":
            # "low" has no context recipe of its own: a medium persona request stands in.
            level = "medium" if step[1] == "low" else step[1]
            requests.append(_create(api, account, level=level, exact=False))
            continue
        if not requests:
            continue
        request_id = requests[step[1] % len(requests)]["id"]
        if kind in ("wrong_proof", "right_proof"):
            started = _start(api, request_id, "totp")
            if started.status_code == 201:
                code = code_at(secret, datetime.now(UTC), PARAMS) if kind == "right_proof" else "0"
                _verify(api, request_id, started.json()["id"], code=code)
        elif kind == "appeal":
            _appeal(api, request_id, statement="please look")
        elif kind == "review":
            _, _, (outcome, code), role = step
            case_id = _appeal(api, request_id).json().get("id")
            if case_id is not None:
                _case_post(api, case_id, "claim", role)
                body = {"outcome": outcome, "reason_code": code, "reason": "property flow"}
                _case_post(api, case_id, "decision", role, body)
        elif kind == "confirm":
            case_id = _appeal(api, request_id).json().get("id")
            if case_id is not None:
                body = {"agree": step[2], "reason": "property flow"}
                _case_post(api, case_id, "confirmation", Role.SUPERVISOR, body)


def _denials(api: Api) -> tuple[set[str], set[str]]:
    """Requests that are denied, and requests a reviewer's recorded decision denied."""

    async def read() -> tuple[set[str], set[str]]:
        async with api.app.state.engine.connect() as conn:
            denied = await conn.execute(
                select(unlock_requests.c.id).where(unlock_requests.c.status == "denied")
            )
            decided = await conn.execute(
                select(review_cases.c.unlock_request_id)
                .join(review_actions, review_actions.c.case_id == review_cases.c.id)
                .where(review_actions.c.action == "decided", review_actions.c.outcome == "deny")
            )
            return {r[0] for r in denied}, {r[0] for r in decided}

    result: tuple[set[str], set[str]] = api.run(read)
    return result


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=LEVELS, steps=st.lists(STEP, min_size=1, max_size=12))
def test_no_request_is_denied_without_a_reviewers_decision(
    sqlite_api: Api, first: str, steps: list[tuple[Any, ...]]
) -> None:
    # Every flow starts with a request, so the later steps have something to act on.
    _run(sqlite_api, [("create", first), *steps])
    denied, by_reviewer = _denials(sqlite_api)
    assert denied <= by_reviewer, steps
    reviewers = {"test-agent", "test-supervisor"}
    for event in _audit_events(sqlite_api):
        if event["kind"] == "decision" and event["data"].get("status") == "denied":
            assert event["data"]["via"] == "review"
            assert event["actor"] in reviewers
            assert event["data"]["unlock_request_id"] in by_reviewer
