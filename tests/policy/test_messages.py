"""Every reason and not-offered code has a message in zh-CN and en (PIPL-24 explanation; OWASP-FP-13
messages name categories, not thresholds). The build fails when a code lacks one."""

from __future__ import annotations

import re
import tomllib

import pytest

from policy.model import Method, NotOfferedReason, ReviewReason, RiskLevel, SignalCode
from tests.policy.conftest import default_texts

_, CATALOGS = default_texts()


@pytest.mark.parametrize("locale", sorted(CATALOGS))
def test_every_code_has_a_message_in_each_catalog(locale: str) -> None:
    catalog = tomllib.loads(CATALOGS[locale])
    sections = {
        "reasons": [c.value for c in SignalCode],
        "not_offered": [c.value for c in NotOfferedReason],
        "review": [c.value for c in ReviewReason],
        "levels": [c.value for c in RiskLevel],
        "methods": [c.value for c in Method],
    }
    for section, codes in sections.items():
        missing = [c for c in codes if not str(catalog[section].get(c, "")).strip()]
        assert not missing, f"{locale} [{section}] lacks messages for {missing}"


@pytest.mark.parametrize("locale", sorted(CATALOGS))
def test_no_message_reveals_a_number(locale: str) -> None:
    catalog = tomllib.loads(CATALOGS[locale])
    for section, table in catalog.items():
        if isinstance(table, dict):
            for key, text in table.items():
                assert not re.search(r"\d", text), f"{locale} [{section}].{key} reveals a number"


def test_both_locales_ship() -> None:
    assert set(CATALOGS) == {"en", "zh-CN"}
