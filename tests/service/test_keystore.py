"""Key store: development keys generated once and reused; production refuses to guess."""

from __future__ import annotations

import base64
import logging
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from audit.checkpoint import Checkpoint, verify_checkpoint
from service.keystore import (
    MASTER_KEY_FILE,
    PSEUDONYM_KEY_FILE,
    SIGNING_KEY_FILE,
    KeyStore,
    KeyStoreError,
)
from service.settings import Settings, SettingsError


def raw_public(store: KeyStore) -> bytes:
    return store.signing_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_development_keys_are_generated_once_with_mode_0600_and_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.from_env({"FAIRUNLOCK_DATA_DIR": str(tmp_path)})
    with caplog.at_level(logging.WARNING, logger="fairunlock.keystore"):
        first = KeyStore.load(settings)
    assert "DEVELOPMENT KEYS" in caplog.text
    assert "NOT FOR PRODUCTION" in caplog.text
    second = KeyStore.load(settings)
    assert raw_public(first) == raw_public(second)
    assert first.master_key == second.master_key
    assert first.pseudonym_key == second.pseudonym_key
    assert len(first.master_key) == len(first.pseudonym_key) == 32
    assert first.master_key != first.pseudonym_key
    for name in (SIGNING_KEY_FILE, MASTER_KEY_FILE, PSEUDONYM_KEY_FILE):
        mode = stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {mode:o}"
    # A different data directory means different keys: nothing is shared by accident.
    other = KeyStore.load(Settings.from_env({"FAIRUNLOCK_DATA_DIR": str(tmp_path / "other")}))
    assert raw_public(other) != raw_public(first)
    assert other.master_key != first.master_key


def test_signing_key_file_is_pkcs8_pem_that_openssl_reads(tmp_path: Path) -> None:
    store = KeyStore.load(Settings.from_env({"FAIRUNLOCK_DATA_DIR": str(tmp_path)}))
    pem = (tmp_path / "keys" / SIGNING_KEY_FILE).read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; the PEM form was checked above")
    public = subprocess.run(
        ["openssl", "pkey", "-in", str(tmp_path / "keys" / SIGNING_KEY_FILE), "-pubout"],
        check=True,
        capture_output=True,
    ).stdout
    assert public == store.public_key_pem()


def test_repr_never_shows_key_material(tmp_path: Path) -> None:
    store = KeyStore.load(Settings.from_env({"FAIRUNLOCK_DATA_DIR": str(tmp_path)}))
    shown = repr(store)
    assert store.master_key.hex() not in shown
    assert repr(store.master_key) not in shown
    settings = Settings.from_env({"FAIRUNLOCK_MASTER_KEY": base64.b64encode(b"k" * 32).decode()})
    assert base64.b64encode(b"k" * 32).decode() not in repr(settings)


@pytest.mark.parametrize(
    ("configured", "missing"),
    [
        ({}, "FAIRUNLOCK_AUDIT_SIGNING_KEY_FILE"),
        ({"FAIRUNLOCK_AUDIT_SIGNING_KEY_FILE": "<signing>"}, "FAIRUNLOCK_MASTER_KEY_FILE"),
        (
            {"FAIRUNLOCK_AUDIT_SIGNING_KEY_FILE": "<signing>", "FAIRUNLOCK_MASTER_KEY": "<b64>"},
            "FAIRUNLOCK_PSEUDONYM_KEY_FILE",
        ),
    ],
)
def test_production_without_configured_keys_fails_naming_the_variable(
    tmp_path: Path, configured: dict[str, str], missing: str
) -> None:
    KeyStore.load(Settings(data_dir=tmp_path / "dev"))
    signing = tmp_path / "dev" / "keys" / SIGNING_KEY_FILE
    env = {
        "FAIRUNLOCK_ENVIRONMENT": "production",
        "FAIRUNLOCK_DATABASE_URL": "postgresql+asyncpg://db/fairunlock",
        "FAIRUNLOCK_DATA_DIR": str(tmp_path / "prod"),
    }
    for name, value in configured.items():
        env[name] = {
            "<signing>": str(signing),
            "<b64>": base64.b64encode(secrets.token_bytes(32)).decode(),
        }[value]
    with pytest.raises(KeyStoreError, match=missing):
        KeyStore.load(Settings.from_env(env))
    # Nothing was generated as a fallback.
    assert not (tmp_path / "prod").exists()


def test_production_loads_configured_files_and_variables(tmp_path: Path) -> None:
    dev = KeyStore.load(Settings(data_dir=tmp_path / "dev"))
    keys = tmp_path / "dev" / "keys"
    master_raw = tmp_path / "master.bin"
    master_raw.write_bytes(secrets.token_bytes(32))
    master_raw.chmod(0o600)
    pseudonym = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    store = KeyStore.load(
        Settings.from_env(
            {
                "FAIRUNLOCK_ENVIRONMENT": "production",
                "FAIRUNLOCK_DATABASE_URL": "postgresql+asyncpg://db/fairunlock",
                "FAIRUNLOCK_DATA_DIR": str(tmp_path / "prod"),
                "FAIRUNLOCK_AUDIT_SIGNING_KEY_FILE": str(keys / SIGNING_KEY_FILE),
                "FAIRUNLOCK_MASTER_KEY_FILE": str(master_raw),
                "FAIRUNLOCK_PSEUDONYM_KEY": pseudonym,
            }
        )
    )
    assert store.development_keys == ()
    assert raw_public(store) == raw_public(dev)
    assert store.master_key == master_raw.read_bytes()
    assert store.pseudonym_key == base64.urlsafe_b64decode(pseudonym)
    # The signer made from the store signs checkpoints the public key verifies.
    signer = store.signer("prod.fairunlock/audit")
    note = signer.sign(Checkpoint("prod.fairunlock/audit", 3, bytes(32)))
    assert verify_checkpoint(note, dev.signing_key.public_key(), "prod.fairunlock/audit").size == 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FAIRUNLOCK_MASTER_KEY", "not base64!", "FAIRUNLOCK_MASTER_KEY must be base64"),
        ("FAIRUNLOCK_MASTER_KEY", base64.b64encode(b"short").decode(), "got 5 bytes"),
        ("FAIRUNLOCK_PSEUDONYM_KEY", "", None),
        ("FAIRUNLOCK_AUDIT_BATCH_SIZE", "0", "FAIRUNLOCK_AUDIT_BATCH_SIZE must be between"),
        ("FAIRUNLOCK_AUDIT_INTEGRATOR", "ture", "FAIRUNLOCK_AUDIT_INTEGRATOR must be one of"),
        ("FAIRUNLOCK_AUDIT_ORIGIN", "a\u2014b", "FAIRUNLOCK_AUDIT_ORIGIN must be one printable"),
    ],
)
def test_malformed_key_and_audit_settings_are_refused_at_startup(
    name: str, value: str, message: str | None
) -> None:
    if message is None:  # empty means unset, like every other setting
        assert Settings.from_env({name: value}).pseudonym_key_b64 is None
        return
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.from_env({name: value})
    if name.endswith("_KEY"):  # a secret, even a malformed one, is never echoed
        assert value not in str(caught.value)


def test_unreadable_or_wrong_key_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(KeyStoreError, match="FAIRUNLOCK_AUDIT_SIGNING_KEY_FILE"):
        KeyStore.load(Settings(data_dir=tmp_path, audit_signing_key_file=bad))
    with pytest.raises(KeyStoreError, match=r"FAIRUNLOCK_MASTER_KEY_FILE.*cannot read"):
        KeyStore.load(Settings(data_dir=tmp_path, master_key_file=tmp_path / "absent"))
    same = base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(KeyStoreError, match="must be different keys"):
        KeyStore.load(Settings(data_dir=tmp_path, master_key_b64=same, pseudonym_key_b64=same))
