"""`fairunlock audit …` end to end in subprocesses: export, verify, openssl, public-key, errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit.entry import AuditEvent, EntryKind, decode_entry
from audit.store import append_event_now
from service.db import create_engine
from service.schema import upgrade

ORIGIN = "cli.fairunlock/audit"


def fairunlock(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRUNLOCK_")}
    env.update(FAIRUNLOCK_DATA_DIR=str(data_dir), FAIRUNLOCK_AUDIT_ORIGIN=ORIGIN)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def seed(data_dir: Path, count: int) -> None:
    url = f"sqlite+aiosqlite:///{data_dir / 'fairunlock.sqlite3'}"

    async def main() -> None:
        engine = create_engine(url)
        try:
            for n in range(count):
                await append_event_now(
                    engine,
                    AuditEvent(EntryKind.DECISION, "svc", "subj", {"n": n}, datetime.now(UTC)),
                )
        finally:
            await engine.dispose()

    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(url)  # the migrations, as `fairunlock db upgrade` and the app apply them
    asyncio.run(main())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    seed(path, 20)
    done = fairunlock(path, "audit", "integrate", "--once", "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    assert "integrated 20 entries; log size 20" in done.stdout
    return path


def test_export_then_verify_exits_0_and_records_the_export(data_dir: Path, tmp_path: Path) -> None:
    pub = tmp_path / "pub.pem"
    shown = fairunlock(data_dir, "audit", "public-key")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    pub.write_text(shown.stdout)
    vkey = fairunlock(data_dir, "audit", "public-key", "--vkey")
    assert vkey.stdout.startswith(f"{ORIGIN}+")

    bundle = tmp_path / "bundle"
    exported = fairunlock(
        data_dir, "audit", "export", "--out", str(bundle), "--purpose", "CLI test", "--actor", "me"
    )
    assert exported.returncode == 0, exported.stderr
    assert "exported entries [0, 20)" in exported.stdout
    checked = fairunlock(data_dir, "audit", "verify", str(bundle), "--key", str(pub))
    assert checked.returncode == 0, checked.stderr
    assert "[0, 20) verified" in checked.stdout

    # The export is itself an entry, appended after it; a delta export carries it and chains.
    assert fairunlock(data_dir, "audit", "integrate", "--once").returncode == 0
    delta = tmp_path / "delta"
    assert (
        fairunlock(data_dir, "audit", "export", "--out", str(delta), "--from", "20").returncode == 0
    )
    chained = fairunlock(
        data_dir,
        "audit",
        "verify",
        str(delta),
        "--key",
        str(pub),
        "--previous",
        str(bundle / "checkpoint"),
    )
    assert chained.returncode == 0, chained.stderr
    [record] = [decode_entry(x) for x in (delta / "entries.jsonl").read_bytes().splitlines()]
    assert (record["kind"], record["actor"]) == ("export", "me")
    assert record["data"]["purpose"] == "CLI test"
    assert (record["data"]["from"], record["data"]["to"]) == (0, 20)

    # Tampering with the bundle is reported as a failure (exit 1), naming the check.
    lines = (bundle / "entries.jsonl").read_bytes().splitlines(keepends=True)
    (bundle / "entries.jsonl").write_bytes(b"".join(lines[:-1]))
    tampered = fairunlock(data_dir, "audit", "verify", str(bundle), "--key", str(pub))
    assert tampered.returncode == 1
    assert tampered.stdout == ""
    assert "FAILED" in tampered.stderr


def test_openssl_verifies_the_manifest_signature(data_dir: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed here; the Python verifier covers the signature")
    pub = tmp_path / "pub.pem"
    pub.write_text(fairunlock(data_dir, "audit", "public-key").stdout)
    bundle = tmp_path / "bundle"
    assert fairunlock(data_dir, "audit", "export", "--out", str(bundle)).returncode == 0
    command = [
        "openssl",
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(pub),
        "-rawin",
        "-in",
        str(bundle / "manifest.json"),
        "-sigfile",
        str(bundle / "manifest.json.sig"),
    ]
    good = subprocess.run(command, capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    assert "Signature Verified Successfully" in good.stdout
    manifest = bundle / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"to": 20', b'"to": 19'))
    bad = subprocess.run(command, capture_output=True, text=True, check=False)
    assert bad.returncode == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--out", "{tmp}/x", "--from", "5", "--to", "2"], "not inside the log"),
        (["export", "--out", "{tmp}/x", "--to", "999"], "not inside the log"),
        (["export", "--out", "{tmp}/x", "--from", "-1"], "must not be negative"),
        (["export", "--out", "{tmp}/x", "--from", "abc"], "not an integer"),
        (["export"], "--out"),
        (["export", "--out", "{tmp}/taken"], "exists"),
        (["integrate", "--batch-size", "0"], "at least 1"),
        (["verify", "{tmp}/nowhere", "--key", "{tmp}/nokey.pem"], "usage error"),
    ],
)
def test_bad_input_is_a_message_and_exit_2_never_a_traceback(
    data_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "entries.jsonl").write_text("already here\n")
    result = fairunlock(data_dir, "audit", *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_production_without_keys_is_exit_2_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRUNLOCK_")}
    env.update(
        FAIRUNLOCK_ENVIRONMENT="production",
        FAIRUNLOCK_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        FAIRUNLOCK_DATA_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "export", "--out", str(tmp_path / "b")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "FAIRUNLOCK_AUDIT_SIGNING_KEY_FILE" in result.stderr
    assert "Traceback" not in result.stderr


def test_rebuild_subtrees_reports_the_roots_it_stored(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    seed(data_dir, 300)  # one subtree of 256 entries
    assert fairunlock(data_dir, "audit", "integrate", "--once").returncode == 0
    done = fairunlock(data_dir, "audit", "rebuild-subtrees")
    assert done.returncode == 0, done.stderr
    assert "stored 1 subtree roots" in done.stdout
