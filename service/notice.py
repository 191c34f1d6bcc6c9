"""The face-verification notice (FRM-5): loaded once from a versioned file shipped with the app."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from policy.model import Locale

SECTIONS = ("processor", "purpose", "method", "retention", "necessity", "rights", "withdraw")


@dataclass(frozen=True, slots=True)
class FaceNotice:
    version: str
    purpose: str
    texts: Mapping[str, Mapping[str, str]]


def parse_notice(text: str) -> FaceNotice:
    doc = tomllib.loads(text)
    version, purpose = doc.get("version"), doc.get("purpose")
    if not isinstance(version, str) or not version or not isinstance(purpose, str) or not purpose:
        raise ValueError("face notice: version and purpose are required")
    texts: dict[str, Mapping[str, str]] = {}
    for locale in Locale:
        section = doc.get(locale.value)
        if not isinstance(section, dict):
            raise ValueError(f"face notice: [{locale.value}] is missing")
        missing = [
            k for k in SECTIONS if not isinstance(section.get(k), str) or not section[k].strip()
        ]
        if missing:
            raise ValueError(f"face notice: [{locale.value}] lacks {', '.join(missing)}")
        texts[locale.value] = MappingProxyType({k: section[k] for k in SECTIONS})
    return FaceNotice(version=version, purpose=purpose, texts=MappingProxyType(texts))


def load_shipped_notice() -> FaceNotice:
    return parse_notice(
        resources.files("service").joinpath("notices/face-notice.toml").read_text("utf-8")
    )
