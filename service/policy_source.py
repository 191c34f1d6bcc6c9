"""Reading policy files: the one place that does I/O for the pure ``policy`` package.

A policy file's catalogs are the ``messages/<locale>.toml`` files beside it when that folder exists,
else the shipped ones, so an operator can change weights without copying every message.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from policy.config import Policy, load_policy
from policy.model import Locale

DEFAULT_POLICY = "default.toml"


def _shipped(name: str) -> str:
    return resources.files("policy").joinpath(name).read_text(encoding="utf-8")


def shipped_catalogs() -> dict[str, str]:
    return {loc.value: _shipped(f"messages/{loc.value}.toml") for loc in Locale}


def load_default_policy() -> Policy:
    return load_policy(_shipped(DEFAULT_POLICY), shipped_catalogs())


def load_policy_file(path: Path) -> Policy:
    """Load a policy file; raises OSError if unreadable and PolicyError if invalid."""
    text = path.read_text(encoding="utf-8")
    beside = path.parent / "messages"
    if beside.is_dir():
        catalogs = {
            loc.value: (beside / f"{loc.value}.toml").read_text(encoding="utf-8")
            for loc in Locale
            if (beside / f"{loc.value}.toml").exists()
        }
    else:
        catalogs = shipped_catalogs()
    return load_policy(text, catalogs)


def load_configured_policy(path: Path | None) -> Policy:
    return load_default_policy() if path is None else load_policy_file(path)
