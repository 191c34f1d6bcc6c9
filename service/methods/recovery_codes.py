"""Recovery codes: 10 single-use codes of 80 random bits, stored only as argon2id hashes.

argon2id at the OWASP minimum (m = 19 MiB, t = 2, p = 1) costs ≈ 19 ms here (PERF.md §5): codes
are high-entropy, so the hash guards a stolen database, not a guessable secret.
"""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

CODE_COUNT = 10
# Crockford's base32 without look-alikes (no I, L, O, U): 16 symbols = 80 bits.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
GROUPS, GROUP_LEN = 4, 4

HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(GROUPS * GROUP_LEN))
    return "-".join(raw[i : i + GROUP_LEN] for i in range(0, len(raw), GROUP_LEN))


def normalize(code: str) -> str:
    """What a person may type: any case, with or without dashes and spaces."""
    cleaned = code.replace("-", "").replace(" ", "").upper()
    return "-".join(cleaned[i : i + GROUP_LEN] for i in range(0, len(cleaned), GROUP_LEN))


def hash_code(code: str) -> str:
    return HASHER.hash(normalize(code))


def matches(code_hash: str, code: str) -> bool:
    try:
        return HASHER.verify(code_hash, normalize(code))
    except (VerificationError, InvalidHashError):
        return False
