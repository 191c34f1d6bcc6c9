from __future__ import annotations

from pathlib import Path

import pytest

import policy as policy_pkg
from policy.config import Policy, load_policy

POLICY_DIR = Path(policy_pkg.__file__).parent


def default_texts() -> tuple[str, dict[str, str]]:
    policy_text = (POLICY_DIR / "default.toml").read_text(encoding="utf-8")
    catalogs = {
        loc: (POLICY_DIR / "messages" / f"{loc}.toml").read_text(encoding="utf-8")
        for loc in ("en", "zh-CN")
    }
    return policy_text, catalogs


def load_default() -> Policy:
    text, catalogs = default_texts()
    return load_policy(text, catalogs)


@pytest.fixture(scope="session")
def default_policy() -> Policy:
    return load_default()
