"""The process's secret keys, loaded once at startup: audit signing, master and pseudonym keys.

* audit signing key: Ed25519, a PKCS#8 PEM file (so ``openssl pkey -pubout`` gives the public half);
* master key: 32 bytes that wrap the per-account data keys (service/data_keys.py);
* pseudonym key: 32 bytes of HMAC key that turn account ids into audit subjects and blind indexes.

Production takes each from a configured file (or, for the two symmetric keys, a base64 variable)
and refuses to start without it, naming the variable. Development generates the missing ones into
``<data_dir>/keys/`` once (files 0600) and says loudly that they are development keys.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import CheckpointError, CheckpointSigner, load_private_key_pem
from service.settings import PREFIX, Settings, SettingsError, decode_key32

log = logging.getLogger("fairunlock.keystore")

KEYS_DIR = "keys"
SIGNING_KEY_FILE = "audit-signing-key.pem"
MASTER_KEY_FILE = "master.key"
PSEUDONYM_KEY_FILE = "pseudonym.key"
KEY_BYTES = 32


class KeyStoreError(SettingsError):
    """A key is missing, unreadable or malformed; the message names the variable or file."""


@dataclass(frozen=True, slots=True)
class KeyStore:
    signing_key: Ed25519PrivateKey = field(repr=False)
    master_key: bytes = field(repr=False)
    pseudonym_key: bytes = field(repr=False)
    # Which keys came from the development directory (empty in production).
    development_keys: tuple[str, ...] = ()

    @classmethod
    def load(cls, settings: Settings) -> KeyStore:
        """Read (or, in development, create) every key; call once per process."""
        keys_dir = settings.data_dir / KEYS_DIR
        dev: list[str] = []

        if settings.audit_signing_key_file is not None:
            signing = _load_signing_key(
                settings.audit_signing_key_file, f"{PREFIX}AUDIT_SIGNING_KEY_FILE"
            )
        elif settings.is_production:
            raise KeyStoreError(
                f"{PREFIX}AUDIT_SIGNING_KEY_FILE is required in production "
                "(a PKCS#8 PEM Ed25519 key, e.g. from `openssl genpkey -algorithm ed25519`)"
            )
        else:
            path = keys_dir / SIGNING_KEY_FILE
            _create_once(path, _new_signing_key_pem)
            signing = _load_signing_key(path, str(path))
            dev.append(str(path))

        master = _symmetric(
            settings,
            "MASTER_KEY",
            file=settings.master_key_file,
            b64=settings.master_key_b64,
            dev_path=keys_dir / MASTER_KEY_FILE,
            dev=dev,
        )
        pseudonym = _symmetric(
            settings,
            "PSEUDONYM_KEY",
            file=settings.pseudonym_key_file,
            b64=settings.pseudonym_key_b64,
            dev_path=keys_dir / PSEUDONYM_KEY_FILE,
            dev=dev,
        )
        if secrets.compare_digest(master, pseudonym):
            # One key for two purposes would let a pseudonym leak relate to the wrapping key.
            raise KeyStoreError(
                f"{PREFIX}MASTER_KEY and {PREFIX}PSEUDONYM_KEY must be different keys"
            )
        if dev:
            log.warning(
                "USING DEVELOPMENT KEYS from %s — generated on this machine, NOT FOR PRODUCTION; "
                "set FAIRUNLOCK_AUDIT_SIGNING_KEY_FILE, FAIRUNLOCK_MASTER_KEY(_FILE) and "
                "FAIRUNLOCK_PSEUDONYM_KEY(_FILE)",
                ", ".join(dev),
            )
        return cls(signing, master, pseudonym, tuple(dev))

    def signer(self, name: str) -> CheckpointSigner:
        """The checkpoint signer; ``name`` is the C2SP key name (the log origin by convention)."""
        return CheckpointSigner(name, self.signing_key)

    def public_key_pem(self) -> bytes:
        return self.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _new_signing_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_symmetric_key() -> bytes:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"


def _create_once(path: Path, make: Callable[[], bytes]) -> None:
    """Publish a new key file atomically unless one exists (several workers may start at once)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(make())
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails if the name exists: the first worker's key wins, the others read it.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_private(path: Path, what: str) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"{what}: cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s is readable by group or others (mode %o)", path, mode & 0o777)
    return data


def _load_signing_key(path: Path, what: str) -> Ed25519PrivateKey:
    data = _read_private(path, what)
    try:
        return load_private_key_pem(data)
    except CheckpointError as exc:
        raise KeyStoreError(f"{what}: {path}: {exc}") from None


def _decode_key_file(path: Path, what: str) -> bytes:
    data = _read_private(path, what)
    if len(data) == KEY_BYTES:
        return data  # raw key bytes
    try:
        return decode_key32(what.removeprefix(PREFIX), data.decode("ascii"))
    except (UnicodeDecodeError, SettingsError):
        raise KeyStoreError(
            f"{what}: {path} must hold 32 raw bytes or their base64 on one line"
        ) from None


def _symmetric(
    settings: Settings,
    name: str,
    *,
    file: Path | None,
    b64: str | None,
    dev_path: Path,
    dev: list[str],
) -> bytes:
    if file is not None and b64 is not None:
        raise KeyStoreError(f"set only one of {PREFIX}{name}_FILE and {PREFIX}{name}")
    if file is not None:
        return _decode_key_file(file, f"{PREFIX}{name}_FILE")
    if b64 is not None:
        return decode_key32(name, b64)
    if settings.is_production:
        raise KeyStoreError(
            f"{PREFIX}{name}_FILE or {PREFIX}{name} (base64 of 32 random bytes) is required in "
            "production"
        )
    _create_once(dev_path, _new_symmetric_key)
    dev.append(str(dev_path))
    return _decode_key_file(dev_path, str(dev_path))
