"""service.flows.unlock units: the remembered explanation is explain()'s text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.engine import decide
from policy.explain import explain
from policy.model import AccountFacts, Locale, RequestHistory, UnlockRequestFacts
from service.flows import unlock
from tests.policy.conftest import load_default
from tests.policy.strategies import NOW, accounts, histories, requests

POLICY = load_default()
BOUND = 3  # small, so examples also run through the emptying of a full cache


@settings(max_examples=300, deadline=None)
@given(
    cases=st.lists(
        st.tuples(requests, accounts, histories, st.sampled_from(list(Locale))),
        min_size=1,
        max_size=8,
    )
)
def test_a_remembered_explanation_is_the_one_explain_writes(
    cases: list[tuple[UnlockRequestFacts, AccountFacts, RequestHistory, Locale]],
) -> None:
    # Several decisions per example through one cache: a key that missed something explain
    # reads would hand one decision another's text.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unlock, "MAX_EXPLANATIONS", BOUND)
        patch.setattr(unlock, "_EXPLANATIONS", {})
        for facts, account, history, locale in cases:
            decision = decide(facts, account, history, POLICY, NOW)
            expected = explain(decision, POLICY.catalogs[locale])
            assert unlock.explanation(decision, POLICY, locale) == expected
            assert unlock.explanation(decision, POLICY, locale) == expected  # remembered
            assert len(unlock._EXPLANATIONS) <= BOUND
