"""service.flows.unlock units: the remembered explanation is explain()'s text; the IP check is
ipaddress's."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
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


_IPV4ISH = st.text(alphabet="0123456789.x ", max_size=20) | st.builds(
    lambda octets, zeros: ".".join(("0" * z) + str(o) for o, z in zip(octets, zeros, strict=True)),
    st.lists(st.integers(0, 300), min_size=4, max_size=4),
    st.lists(st.integers(0, 1), min_size=4, max_size=4),
)


def _ipaddress_accepts(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@settings(max_examples=3000)
@given(text=_IPV4ISH | st.ip_addresses().map(str) | st.text(max_size=45))
@example(text="fe80::1%eth0")  # a scoped IPv6 address: the C library refuses, ipaddress takes it
@example(text="::ffff:1.2.3.4")
@example(text="01.2.3.4")
@example(text="1.2.3.4\x00")
@example(text="\u0661.\u0662.\u0663.\u0664")  # Arabic-Indic digits
def test_the_ip_check_answers_as_ipaddress_does(text: str) -> None:
    assert unlock.is_ip_address(text) == _ipaddress_accepts(text)
