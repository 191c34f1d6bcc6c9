"""The pure risk engine: facts in, a RiskAssessment and an ordered, explained Offer out.

No I/O, no framework, no clock: callers pass the policy texts and the time.
"""

from policy.config import Policy, PolicyError, load_policy
from policy.engine import assess, decide, make_offer, satisfies
from policy.explain import decision_json, explain
from policy.signals import derive_signals

__all__ = [
    "Policy",
    "PolicyError",
    "assess",
    "decide",
    "decision_json",
    "derive_signals",
    "explain",
    "load_policy",
    "make_offer",
    "satisfies",
]
