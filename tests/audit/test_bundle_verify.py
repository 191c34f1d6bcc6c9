"""Export bundles and the offline verifier: genuine bundles pass, every kind of tampering fails
with a message naming the failed check, openssl accepts the manifest signature, and the verifier
depends on nothing but the standard library and `cryptography`."""

from __future__ import annotations

import ast
import base64
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.bundle import BundleError, write_bundle
from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    public_key_pem,
    split_note,
    verify_checkpoint,
    verify_note,
)
from audit.entry import AuditEvent, EntryKind, decode_entry, encode_entry
from audit.merkle import EMPTY_ROOT, CompactRange, leaf_hash, root_from_leaf_hashes
from audit.verify import (
    CHECKPOINT_FILE,
    ENTRIES_FILE,
    MANIFEST_FILE,
    MANIFEST_SIGNATURE_FILE,
    PREFIX_FILE,
    PUBLIC_KEY_FILE,
    FileDigest,
    Manifest,
    VerificationError,
    main,
    verify_bundle,
)

ORIGIN = "fairunlock.example.com/audit"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SIGNER = CheckpointSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
OTHER_SIGNER = CheckpointSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(32)))


def _log(count: int, variant: str = "") -> list[bytes]:
    """`count` canonical entries of ORIGIN; `variant` changes their content (a forked history)."""
    kinds = list(EntryKind)
    base = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    return [
        encode_entry(
            index,
            ORIGIN,
            AuditEvent(
                kind=kinds[index % len(kinds)],
                actor="system" if index % 3 else "api-key:ops",
                subject=None if index % 5 == 0 else f"pseudonym-{index % 4}{variant}",
                data={"attempt": index % 4, "outcome": "failure", "note": f"n{index}{variant}"},
                time=base + timedelta(seconds=index),
            ),
        )
        for index in range(count)
    ]


LOG = _log(40)


def _bundle(
    out: Path,
    log: list[bytes],
    start: int = 0,
    end: int | None = None,
    signer: CheckpointSigner = SIGNER,
) -> Path:
    end = len(log) if end is None else end
    prefix = CompactRange.empty()
    prefix.extend(leaf_hash(line) for line in log[:start])
    write_bundle(
        out, iter(log[start:end]), start=start, prefix=prefix, signer=signer, origin=ORIGIN
    )
    return out


def _checkpoint(log: list[bytes], size: int, signer: CheckpointSigner = SIGNER) -> str:
    return signer.sign(
        Checkpoint(ORIGIN, size, root_from_leaf_hashes([leaf_hash(x) for x in log[:size]]))
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "pub.pem"
    path.write_text(public_key_pem(SIGNER.public_key))
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return _bundle(tmp_path / "bundle", LOG, end=20)


def _run(
    capsys: pytest.CaptureFixture[str], bundle: Path, key: Path, *extra: str
) -> tuple[int, str, str]:
    code = main([str(bundle), "--key", str(key), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _lines(bundle: Path) -> list[bytes]:
    return (bundle / ENTRIES_FILE).read_bytes().split(b"\n")[:-1]


def _write_lines(bundle: Path, lines: list[bytes], tail: bytes = b"\n") -> None:
    (bundle / ENTRIES_FILE).write_bytes(b"\n".join(lines) + tail)


def _reseal(bundle: Path, signer: CheckpointSigner = SIGNER) -> None:
    """Recompute the manifest's file hashes and re-sign it, as someone holding the key could.

    Tampered entries then get past the file-hash check, so the per-line and root checks
    are exercised on their own.
    """
    manifest = Manifest.from_json((bundle / MANIFEST_FILE).read_bytes())
    files = {}
    for name in manifest.files:
        data = (bundle / name).read_bytes()
        files[name] = FileDigest(hashlib.sha256(data).hexdigest(), len(data))
    checkpoint_sha = hashlib.sha256((bundle / CHECKPOINT_FILE).read_bytes()).hexdigest()
    resealed = Manifest(
        origin=manifest.origin,
        start=manifest.start,
        end=manifest.end,
        root=manifest.root,
        checkpoint_sha256=checkpoint_sha,
        files=files,
        vkey=manifest.vkey,
        key_id=manifest.key_id,
        purpose=manifest.purpose,
    )
    raw = resealed.to_json()
    (bundle / MANIFEST_FILE).write_bytes(raw)
    (bundle / MANIFEST_SIGNATURE_FILE).write_bytes(signer.sign_bytes(raw))


# --- genuine bundles ---------------------------------------------------------------------------


def test_full_bundle_verifies_with_a_one_line_summary(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    code, out, err = _run(capsys, bundle, key_file)
    assert (code, err) == (0, "")
    assert out.count("\n") == 1
    assert "entries [0, 20) verified" in out
    result = verify_bundle(bundle, SIGNER.public_key)
    assert (result.origin, result.start, result.end) == (ORIGIN, 0, 20)
    assert result.root == root_from_leaf_hashes([leaf_hash(line) for line in LOG[:20]])


@pytest.mark.parametrize(("start", "end"), [(12, 20), (1, 40), (20, 20), (0, 0), (39, 40)])
def test_delta_and_edge_bundles_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_file: Path, start: int, end: int
) -> None:
    bundle = _bundle(tmp_path / "delta", LOG, start=start, end=end)
    code, out, err = _run(capsys, bundle, key_file)
    assert code == 0, err
    assert f"entries [{start}, {end}) verified" in out


def test_bundle_files_and_manifest_contents(bundle: Path) -> None:
    assert (bundle / ENTRIES_FILE).read_bytes() == b"\n".join(LOG[:20]) + b"\n"
    assert (bundle / PREFIX_FILE).read_bytes() == b""
    raw = (bundle / MANIFEST_FILE).read_bytes()
    SIGNER.public_key.verify((bundle / MANIFEST_SIGNATURE_FILE).read_bytes(), raw)
    manifest = json.loads(raw)
    assert manifest["origin"] == ORIGIN
    assert (manifest["from"], manifest["to"]) == (0, 20)
    assert manifest["vkey"] == SIGNER.verifier_key()
    assert manifest["key_id"] == SIGNER.key_id.hex()
    assert manifest["version"] == 1
    for name in (ENTRIES_FILE, CHECKPOINT_FILE, PREFIX_FILE, PUBLIC_KEY_FILE):
        data = (bundle / name).read_bytes()
        assert manifest["files"][name] == {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
    assert manifest["checkpoint_sha256"] == manifest["files"][CHECKPOINT_FILE]["sha256"]
    note = (bundle / CHECKPOINT_FILE).read_text()
    assert note.startswith(f"{ORIGIN}\n20\n{manifest['root']}\n\n\u2014 {ORIGIN} ")
    assert (bundle / PUBLIC_KEY_FILE).read_text() == public_key_pem(SIGNER.public_key)


def test_purpose_is_recorded_in_the_signed_manifest(tmp_path: Path) -> None:
    manifest = write_bundle(
        tmp_path / "b",
        iter(LOG[:3]),
        start=0,
        prefix=CompactRange.empty(),
        signer=SIGNER,
        origin=ORIGIN,
        purpose="quarterly audit Q4",
    )
    assert manifest.purpose == "quarterly audit Q4"
    assert json.loads((tmp_path / "b" / MANIFEST_FILE).read_bytes())["purpose"] == (
        "quarterly audit Q4"
    )


def test_delta_bundle_carries_the_prefix_compact_range(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "delta", LOG, start=13, end=20)
    prefix = CompactRange.empty()
    prefix.extend(leaf_hash(line) for line in LOG[:13])
    assert (bundle / PREFIX_FILE).read_text() == prefix.to_lines()
    assert _lines(bundle) == LOG[13:20]


# --- tampering with entries.jsonl: caught by the signed file hashes ----------------------------


def _swap(lines: list[bytes]) -> list[bytes]:
    lines[3], lines[4] = lines[4], lines[3]
    return lines


TAMPERING: list[tuple[str, Callable[[list[bytes]], list[bytes]]]] = [
    ("delete-first", lambda lines: lines[1:]),
    ("delete-last", lambda lines: lines[:-1]),
    ("delete-middle", lambda lines: lines[:7] + lines[8:]),
    ("swap", _swap),
    ("insert", lambda lines: [*lines[:5], lines[5], *lines[5:]]),
]


@pytest.mark.parametrize(("name", "mutate"), TAMPERING, ids=[name for name, _ in TAMPERING])
def test_tampered_lines_fail_the_file_hash(
    capsys: pytest.CaptureFixture[str],
    bundle: Path,
    key_file: Path,
    name: str,
    mutate: Callable[[list[bytes]], list[bytes]],
) -> None:
    _write_lines(bundle, mutate(_lines(bundle)))
    code, out, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert out == ""
    assert err.startswith("FAILED file hash: entries.jsonl")


def test_one_changed_byte_fails_the_file_hash(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    data = bytearray((bundle / ENTRIES_FILE).read_bytes())
    data[100] ^= 0x01
    (bundle / ENTRIES_FILE).write_bytes(bytes(data))
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "file hash: entries.jsonl: SHA-256 does not match the manifest" in err


def test_truncated_file_fails_naming_the_size(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    data = (bundle / ENTRIES_FILE).read_bytes()
    (bundle / ENTRIES_FILE).write_bytes(data[:-50])
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert f"entries.jsonl is {len(data) - 50} bytes, the manifest says {len(data)}" in err


# --- tampering past a re-signed manifest: the line and root checks on their own ----------------


RESEALED_TAMPERING: list[tuple[str, Callable[[list[bytes]], list[bytes]], str]] = [
    ("delete-first", lambda lines: lines[1:], "line 1: index is 1, expected 0"),
    ("delete-middle", lambda lines: lines[:7] + lines[8:], "line 8: index is 8, expected 7"),
    (
        "delete-last",
        lambda lines: lines[:-1],
        "ends after 19 entries (index 18); the checkpoint covers up to size 20",
    ),
    ("swap", _swap, "line 4: index is 4, expected 3"),
    ("insert", lambda lines: [*lines[:6], lines[5], *lines[6:]], "line 7: index is 5, expected 6"),
    ("append", lambda lines: [*lines, LOG[20]], "line 21: more entries than the checkpoint"),
    ("blank-line", lambda lines: [*lines[:2], b"", *lines[2:]], "line 3: blank line"),
    (
        "carriage-return",
        lambda lines: [*lines[:2], lines[2] + b"\r", *lines[3:]],
        "line 3: contains a carriage return",
    ),
    (
        "other-log",
        lambda lines: [lines[0].replace(ORIGIN.encode(), b"evil.example/audit"), *lines[1:]],
        "line 1: log is 'evil.example/audit', expected 'fairunlock.example.com/audit'",
    ),
    ("not-json", lambda lines: [b"garbage", *lines[1:]], "line 1: not JSON"),
    (
        "non-canonical",
        lambda lines: [lines[0].replace(b'{"actor":', b'{ "actor":'), *lines[1:]],
        "line 1: not a canonical entry",
    ),
]


@pytest.mark.parametrize("case", RESEALED_TAMPERING, ids=[t[0] for t in RESEALED_TAMPERING])
def test_tampered_lines_are_named_even_with_a_resigned_manifest(
    capsys: pytest.CaptureFixture[str],
    bundle: Path,
    key_file: Path,
    case: tuple[str, Callable[[list[bytes]], list[bytes]], str],
) -> None:
    _, mutate, message = case
    _write_lines(bundle, mutate(_lines(bundle)))
    _reseal(bundle)
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert err.startswith("FAILED entry: entries.jsonl ")
    assert message in err


def test_changed_content_with_a_resigned_manifest_fails_the_root(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    lines = _lines(bundle)
    lines[9] = lines[9].replace(b'"outcome":"failure"', b'"outcome":"success"')
    decode_entry(lines[9])  # still a perfectly canonical entry
    _write_lines(bundle, lines)
    _reseal(bundle)
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED root: the root recomputed from entries.jsonl does not match" in err


@pytest.mark.parametrize(
    ("tail", "message"),
    [(b"", "line 20: no final newline"), (b"\ntrailing", "line 21: no final newline")],
)
def test_truncation_or_trailing_bytes_with_a_resigned_manifest(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path, tail: bytes, message: str
) -> None:
    _write_lines(bundle, _lines(bundle), tail=tail)
    _reseal(bundle)
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert message in err


def test_line_number_is_on_the_exception(bundle: Path) -> None:
    lines = _lines(bundle)
    _write_lines(bundle, lines[:7] + lines[8:])
    _reseal(bundle)
    with pytest.raises(VerificationError) as caught:
        verify_bundle(bundle, SIGNER.public_key)
    assert (caught.value.check, caught.value.line) == ("entry", 8)


def test_altered_prefix_of_a_delta_bundle_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_file: Path
) -> None:
    bundle = _bundle(tmp_path / "delta", LOG, start=13, end=20)
    other = CompactRange.empty()
    other.extend(leaf_hash(line) for line in _log(13, variant="x"))
    (bundle / PREFIX_FILE).write_text(other.to_lines())
    _reseal(bundle)
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED root:" in err
    (bundle / PREFIX_FILE).write_text(other.to_lines().split("\n", 1)[1])
    _reseal(bundle)
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED prefix: prefix.compact is not the compact range of [0, 13)" in err


# --- keys and signatures -----------------------------------------------------------------------


def test_checkpoint_resigned_with_another_key_fails(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    checkpoint_text = (bundle / CHECKPOINT_FILE).read_text()
    root = base64.b64decode(checkpoint_text.split("\n")[2])
    (bundle / CHECKPOINT_FILE).write_text(OTHER_SIGNER.sign(Checkpoint(ORIGIN, 20, root)))
    _reseal(bundle)  # even with the genuine manifest key
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED checkpoint signature: checkpoint: no signature by " in err


def test_manifest_resigned_with_another_key_fails(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    _reseal(bundle, signer=OTHER_SIGNER)
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED manifest signature: manifest.json is not signed by the given key" in err


def test_bundle_made_entirely_with_another_key_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_file: Path
) -> None:
    bundle = _bundle(tmp_path / "forged", LOG, end=20, signer=OTHER_SIGNER)
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED manifest signature" in err


def test_altered_manifest_fails_its_signature(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    raw = (bundle / MANIFEST_FILE).read_bytes()
    (bundle / MANIFEST_FILE).write_bytes(raw.replace(b'"to": 20', b'"to": 21'))
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED manifest signature" in err


def test_missing_signature_file_fails(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    (bundle / MANIFEST_SIGNATURE_FILE).unlink()
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED manifest signature: cannot read manifest.json.sig" in err


def test_manifest_pointing_outside_the_bundle_is_refused(bundle: Path) -> None:
    obj = json.loads((bundle / MANIFEST_FILE).read_bytes())
    obj["files"]["../pub.pem"] = {"sha256": "00", "bytes": 1}
    raw = json.dumps(obj).encode()
    (bundle / MANIFEST_FILE).write_bytes(raw)
    (bundle / MANIFEST_SIGNATURE_FILE).write_bytes(SIGNER.sign_bytes(raw))
    with pytest.raises(VerificationError, match="not a plain name"):
        verify_bundle(bundle, SIGNER.public_key)


def test_undecodable_checkpoint_is_a_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    (bundle / CHECKPOINT_FILE).write_bytes(b"\xff\xfe")
    _reseal(bundle)
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 1
    assert "FAILED checkpoint signature" in err
    assert "Traceback" not in err


# --- --previous: consistency with a checkpoint the auditor already holds ----------------------


@pytest.mark.parametrize("previous_size", [0, 1, 12, 16, 20])
def test_earlier_checkpoint_of_the_same_log_is_a_prefix(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    bundle: Path,
    key_file: Path,
    previous_size: int,
) -> None:
    previous = tmp_path / "previous"
    previous.write_text(_checkpoint(LOG, previous_size))
    code, out, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 0, err
    assert f"extends previous checkpoint of size {previous_size}" in out


# 0: the empty tree is a prefix of every tree (a delta bundle once refused it).
@pytest.mark.parametrize("previous_size", [0, 12, 15, 20])
def test_delta_bundle_checks_previous_via_prefix_or_while_streaming(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_file: Path, previous_size: int
) -> None:
    bundle = _bundle(tmp_path / "delta", LOG, start=12, end=20)
    previous = tmp_path / "previous"
    previous.write_text(_checkpoint(LOG, previous_size))
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 0, err


def test_delta_bundle_cannot_establish_consistency_with_an_older_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_file: Path
) -> None:
    bundle = _bundle(tmp_path / "delta", LOG, start=12, end=20)
    previous = tmp_path / "previous"
    previous.write_text(_checkpoint(LOG, 5))
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 1
    assert "consistency cannot be established from this bundle" in err


def test_larger_previous_checkpoint_means_the_size_went_down(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path, key_file: Path
) -> None:
    previous = tmp_path / "previous"
    previous.write_text(_checkpoint(LOG, 30))  # from a later tree of the same log
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 1
    assert "FAILED previous: size went down: previous checkpoint has size 30" in err


@pytest.mark.parametrize("previous_size", [12, 20])
def test_previous_checkpoint_from_a_forked_tree_fails(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    bundle: Path,
    key_file: Path,
    previous_size: int,
) -> None:
    forked = [*LOG[:7], *_log(40, variant="forked")[7:]]
    previous = tmp_path / "previous"
    previous.write_text(_checkpoint(forked, previous_size))
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 1
    assert f"previous checkpoint (size {previous_size}) is not a prefix of this tree" in err


def test_fork_is_caught_in_a_delta_bundle_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_file: Path
) -> None:
    bundle = _bundle(tmp_path / "delta", LOG, start=12, end=20)
    previous = tmp_path / "previous"
    previous.write_text(_checkpoint(_log(40, variant="forked"), 12))
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 1
    assert "is not a prefix of this tree" in err


def test_bundle_failures_are_reported_before_previous_checkpoint_failures(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path, key_file: Path
) -> None:
    lines = _lines(bundle)
    _write_lines(bundle, lines[:7] + lines[8:])
    _reseal(bundle)
    previous = tmp_path / "previous"
    previous.write_text(_checkpoint(LOG, 30))  # would also fail: size went down
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 1
    assert "FAILED entry: entries.jsonl line 8: index is 8, expected 7" in err
    previous.write_text("not a checkpoint")
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert "FAILED entry: entries.jsonl line 8" in err


def test_malformed_previous_checkpoint_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path, key_file: Path
) -> None:
    previous = tmp_path / "previous"
    previous.write_text("not a checkpoint\n")
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 1
    assert "FAILED previous: previous checkpoint: note has no blank line" in err


def test_previous_checkpoint_signed_by_another_key_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path, key_file: Path
) -> None:
    previous = tmp_path / "previous"
    previous.write_text(_checkpoint(LOG, 12, signer=OTHER_SIGNER))
    code, _, err = _run(capsys, bundle, key_file, "--previous", str(previous))
    assert code == 1
    assert "FAILED previous: previous checkpoint: no signature by" in err


# --- usage -------------------------------------------------------------------------------------


def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path, key_file: Path
) -> None:
    assert main([]) == 2
    assert main([str(bundle)]) == 2  # --key is required
    assert main([str(bundle), "--key", str(tmp_path / "missing.pem")]) == 2
    assert main([str(tmp_path / "no-such-dir"), "--key", str(key_file)]) == 2
    (tmp_path / "bad.pem").write_text("not a key")
    assert main([str(bundle), "--key", str(tmp_path / "bad.pem")]) == 2
    assert main([str(bundle), "--key", str(key_file), "--previous", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "usage error" in err
    assert main(["--help"]) == 0


def test_command_line_module_runs_in_a_fresh_interpreter(bundle: Path, key_file: Path) -> None:
    command = [sys.executable, "-m", "audit.verify", str(bundle), "--key", str(key_file)]
    ok = subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROJECT_ROOT)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK {ORIGIN}: entries [0, 20) verified")
    (bundle / ENTRIES_FILE).write_bytes(b"")
    failed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROJECT_ROOT)
    assert failed.returncode == 1
    assert failed.stderr.startswith("FAILED file hash: entries.jsonl is 0 bytes")
    assert "Traceback" not in failed.stderr


def test_full_parse_option_also_passes_genuine_bundles(
    capsys: pytest.CaptureFixture[str], bundle: Path, key_file: Path
) -> None:
    code, _, err = _run(capsys, bundle, key_file, "--full-parse")
    assert code == 0, err


def test_full_parse_catches_a_look_alike_the_byte_check_accepts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_file: Path
) -> None:
    """The documented limit of the fast path: a line that is not an entry but carries the
    expected index and log bytes nested in `data` is only caught by --full-parse. Such a line
    must have been signed into the tree, which encode_entry never produces."""
    look_alike = (
        b'{"actor":"a","data":{"x":[],"index":5,"kind":"decision","log":"'
        + ORIGIN.encode()
        + b'","subject":null},"kind":"decision","time":"2026-11-22T03:00:00.000000Z","v":1}'
    )
    bundle = _bundle(tmp_path / "odd", [*LOG[:5], look_alike, *LOG[6:10]])
    code, _, err = _run(capsys, bundle, key_file)
    assert code == 0, err
    code, _, err = _run(capsys, bundle, key_file, "--full-parse")
    assert code == 1
    assert "FAILED entry: entries.jsonl line 6: keys are" in err


# --- writer refuses what would not verify -------------------------------------------------------


def test_writer_refuses_a_line_break_in_a_later_batch_naming_the_entry(tmp_path: Path) -> None:
    lines = list(_many_lines(9000))  # more than one write batch
    lines[8500] = lines[8500].replace(b'"actor":"', b'"actor":"\n')
    with pytest.raises(BundleError, match=r"entry 8500 is not a canonical entry .* on one line"):
        write_bundle(
            tmp_path / "b",
            iter(lines),
            start=0,
            prefix=CompactRange.empty(),
            signer=SIGNER,
            origin=ORIGIN,
        )


def test_writer_refuses_a_wrong_index(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="index 2"):
        write_bundle(
            tmp_path / "b",
            iter([LOG[0], LOG[1], LOG[3]]),
            start=0,
            prefix=CompactRange.empty(),
            signer=SIGNER,
            origin=ORIGIN,
        )
    assert not (tmp_path / "b" / MANIFEST_SIGNATURE_FILE).exists()


@pytest.mark.parametrize(
    "bad_line",
    [
        LOG[0] + b"\n",
        LOG[0].replace(ORIGIN.encode(), b"other.example/audit"),
        b"",
        LOG[0] + b"x",
        LOG[0].replace(b'"actor":"', b'"actor":"\n'),
        LOG[0].replace(b'"actor":"', b'"actor":"\r'),
    ],
)
def test_writer_refuses_malformed_lines(tmp_path: Path, bad_line: bytes) -> None:
    with pytest.raises(BundleError, match="entry 0 "):
        write_bundle(
            tmp_path / "b",
            iter([bad_line]),
            start=0,
            prefix=CompactRange.empty(),
            signer=SIGNER,
            origin=ORIGIN,
        )


def test_writer_refuses_inconsistent_arguments(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="prefix"):
        write_bundle(
            tmp_path / "a",
            iter([]),
            start=3,
            prefix=CompactRange.empty(),
            signer=SIGNER,
            origin=ORIGIN,
        )
    with pytest.raises(BundleError, match="key name"):
        write_bundle(
            tmp_path / "b",
            iter([]),
            start=0,
            prefix=CompactRange.empty(),
            signer=SIGNER,
            origin="other.example/audit",
        )


def test_writer_never_overwrites_an_existing_bundle(bundle: Path) -> None:
    before = (bundle / ENTRIES_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        _bundle(bundle, LOG, end=5)
    assert (bundle / ENTRIES_FILE).read_bytes() == before


def test_writer_refuses_a_directory_with_any_bundle_file_and_writes_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / "partial"
    target.mkdir()
    (target / MANIFEST_SIGNATURE_FILE).write_bytes(b"old")
    with pytest.raises(FileExistsError):
        _bundle(target, LOG, end=5)
    assert sorted(path.name for path in target.iterdir()) == [MANIFEST_SIGNATURE_FILE]


def test_empty_log_bundle_has_the_empty_root(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "empty", [])
    assert verify_bundle(bundle, SIGNER.public_key).root == EMPTY_ROOT


# --- streaming: memory stays flat ----------------------------------------------------------------


def _many_lines(count: int) -> Iterator[bytes]:
    """Canonical entries for large counts: substitute the index in real encoded templates."""
    templates = [line.split(b'"index":%d,' % index, 1) for index, line in enumerate(LOG)]
    for index in range(count):
        head, tail = templates[index % len(templates)]
        yield b'%s"index":%d,%s' % (head, index, tail)


@pytest.mark.slow
def test_writer_and_verifier_memory_is_flat(tmp_path: Path) -> None:
    count = 100_000
    sample = list(_many_lines(41))
    assert decode_entry(sample[40])["index"] == 40  # the substitution yields real entries
    tracemalloc.start()
    try:
        write_bundle(
            tmp_path / "big",
            _many_lines(count),
            start=0,
            prefix=CompactRange.empty(),
            signer=SIGNER,
            origin=ORIGIN,
        )
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        verify_bundle(tmp_path / "big", SIGNER.public_key)
        _, verify_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    file_size = (tmp_path / "big" / ENTRIES_FILE).stat().st_size
    assert file_size > 20_000_000
    # Bounded by the write batch / read chunk (a few MB), not by the export's size.
    assert write_peak < 8_000_000, (write_peak, file_size)
    assert verify_peak < 8_000_000, (verify_peak, file_size)


# --- openssl interoperability ---------------------------------------------------------------------


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("openssl is not installed; the manifest signature is checked in Python only")
    return path


def _openssl_verify(
    openssl: str, key: Path, data: Path, signature: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            openssl,
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(key),
            "-rawin",
            "-in",
            str(data),
            "-sigfile",
            str(signature),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_openssl_accepts_a_genuine_manifest_and_rejects_a_modified_one(
    bundle: Path, key_file: Path, tmp_path: Path
) -> None:
    openssl = _openssl()
    genuine = _openssl_verify(
        openssl, key_file, bundle / MANIFEST_FILE, bundle / MANIFEST_SIGNATURE_FILE
    )
    assert genuine.returncode == 0, genuine.stderr
    assert "Signature Verified Successfully" in genuine.stdout
    # The bundle's own PEM copy is the same key in a form openssl reads.
    assert (
        _openssl_verify(
            openssl,
            bundle / PUBLIC_KEY_FILE,
            bundle / MANIFEST_FILE,
            bundle / MANIFEST_SIGNATURE_FILE,
        ).returncode
        == 0
    )
    modified = tmp_path / "manifest-modified.json"
    modified.write_bytes((bundle / MANIFEST_FILE).read_bytes().replace(b'"to": 20', b'"to": 21'))
    rejected = _openssl_verify(openssl, key_file, modified, bundle / MANIFEST_SIGNATURE_FILE)
    assert rejected.returncode != 0
    assert "Signature Verification Failure" in rejected.stdout + rejected.stderr


def test_openssl_accepts_the_checkpoint_signature(
    bundle: Path, key_file: Path, tmp_path: Path
) -> None:
    """AUDIT.md §9.1: the first three lines are the signed body; drop the 4-byte key id."""
    openssl = _openssl()
    lines = (bundle / CHECKPOINT_FILE).read_text().split("\n")
    body = tmp_path / "body.txt"
    body.write_text("\n".join(lines[:3]) + "\n")
    signature = tmp_path / "cp.sig"
    signature.write_bytes(base64.b64decode(lines[4].split(" ")[2])[4:])
    result = _openssl_verify(openssl, key_file, body, signature)
    assert result.returncode == 0, result.stderr


# --- the verifier's dependency rule -------------------------------------------------------------

VERIFIER_MODULES = ("audit/verify.py", "audit/merkle.py", "audit/checkpoint.py")
ALLOWED_LOCAL = {"audit.verify", "audit.merkle", "audit.checkpoint"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", VERIFIER_MODULES)
def test_verifier_modules_import_only_stdlib_cryptography_and_each_other(module: str) -> None:
    for name in _imports(PROJECT_ROOT / module):
        top = name.split(".")[0]
        allowed = (
            top in sys.stdlib_module_names
            or top in {"__future__", "cryptography"}
            or name in ALLOWED_LOCAL
        )
        assert allowed, f"{module} imports {name}"


def test_the_audit_package_itself_imports_nothing() -> None:
    assert _imports(PROJECT_ROOT / "audit" / "__init__.py") == set()


def test_importing_the_verifier_loads_no_third_party_code_but_cryptography() -> None:
    script = (
        "import sys; before = set(sys.modules); import audit.verify; "
        "print(sorted(set(sys.modules) - before))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    loaded = set(ast.literal_eval(result.stdout))
    third_party = {name for name in loaded if name.split(".")[0] not in sys.stdlib_module_names}
    audit_modules = {name for name in third_party if name.split(".")[0] == "audit"}
    assert audit_modules == {"audit", *ALLOWED_LOCAL}
    # cryptography's compiled bindings register _openssl and load cffi's backend.
    others = {name.split(".")[0] for name in third_party - audit_modules}
    assert others <= {"cryptography", "_cffi_backend", "_openssl"}, others
    assert "rfc8785" not in loaded
    assert "sqlalchemy" not in loaded


def test_carriage_return_is_found_in_a_line_spanning_two_read_chunks(tmp_path: Path) -> None:
    """The verifier reads 1 MiB chunks; a CR in the part of a line carried over must count."""
    lines = list(_many_lines(6000))  # ~1.3 MB, so some line straddles the first chunk boundary
    line_ends = list(itertools.accumulate(len(line) + 1 for line in lines))
    straddling = next(number for number, end in enumerate(line_ends) if end > 1 << 20)
    offset = line_ends[straddling] - len(lines[straddling]) - 1
    cut = (1 << 20) - offset - 5  # a byte of that line inside the first chunk
    assert 0 < cut < len(lines[straddling]) - 10
    line = lines[straddling]
    lines[straddling] = line[:cut] + b"\r" + line[cut + 1 :]
    bundle = tmp_path / "cr"
    write_bundle(
        bundle,
        iter(lines[:straddling]),
        start=0,
        prefix=CompactRange.empty(),
        signer=SIGNER,
        origin=ORIGIN,
    )
    # Replace the bundle's entries with the CR-bearing lines and reseal, so only the line
    # check stands between the CR and a pass.
    _write_lines(bundle, lines)
    manifest = json.loads((bundle / MANIFEST_FILE).read_bytes())
    leaves = [leaf_hash(x) for x in lines]
    (bundle / CHECKPOINT_FILE).write_text(
        SIGNER.sign(Checkpoint(ORIGIN, len(lines), root_from_leaf_hashes(leaves)))
    )
    manifest["to"] = len(lines)
    manifest["root"] = base64.b64encode(root_from_leaf_hashes(leaves)).decode()
    raw = json.dumps(manifest).encode()
    (bundle / MANIFEST_FILE).write_bytes(raw)
    _reseal(bundle)
    with pytest.raises(VerificationError, match=f"line {straddling + 1}: contains a carriage"):
        verify_bundle(bundle, SIGNER.public_key)


@given(
    end=st.integers(1, 40),
    start_fraction=st.floats(0, 1),
    position_fraction=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
)
@settings(max_examples=60, deadline=None)
def test_any_bit_flip_in_entries_fails_even_with_a_resigned_manifest(
    tmp_path_factory: pytest.TempPathFactory,
    end: int,
    start_fraction: float,
    position_fraction: float,
    bit: int,
) -> None:
    start = int(start_fraction * end)
    bundle = _bundle(tmp_path_factory.mktemp("flip") / "b", LOG, start=start, end=end)
    verify_bundle(bundle, SIGNER.public_key)
    data = bytearray((bundle / ENTRIES_FILE).read_bytes())
    if not data:
        return  # an empty delta has no byte to flip
    data[int(position_fraction * len(data))] ^= 1 << bit
    (bundle / ENTRIES_FILE).write_bytes(bytes(data))
    _reseal(bundle)
    with pytest.raises(VerificationError) as caught:
        verify_bundle(bundle, SIGNER.public_key)
    assert caught.value.check in {"entry", "root"}


@given(
    prefix_size=st.integers(0, 2500),
    count=st.integers(0, 3500),
    cuts=st.lists(st.integers(0, 3500), max_size=6),
    snapshot_fraction=st.none() | st.floats(0, 1),
)
@settings(max_examples=40, deadline=None)
def test_bulk_root_builder_equals_leaf_by_leaf_compact_range(
    prefix_size: int, count: int, cuts: list[int], snapshot_fraction: float | None
) -> None:
    """The verifier hashes aligned blocks of leaves in bulk; whatever the delta start, the way
    the file splits into read chunks, and the --previous size, it must agree with CompactRange."""
    from audit.verify import RootBuilder

    lines = [b"line %d" % index for index in range(prefix_size + count)]
    leaves = [leaf_hash(line) for line in lines]
    prefix = CompactRange.empty()
    prefix.extend(leaves[:prefix_size])
    snapshot = None
    if snapshot_fraction is not None:
        snapshot = prefix_size + int(snapshot_fraction * count)
    builder = RootBuilder(prefix.copy(), snapshot)
    bounds = sorted({0, count, *(cut for cut in cuts if cut <= count)})
    for low, high in itertools.pairwise(bounds):
        builder.add_lines(lines[prefix_size + low : prefix_size + high])
    expected = CompactRange.empty()
    expected.extend(leaves)
    assert builder.finish() == expected
    if snapshot is not None:
        assert builder.snapshot_root == root_from_leaf_hashes(leaves[:snapshot])
    else:
        assert builder.snapshot_root is None


# --- hostile files: each a clean VerificationError, never a hang or another exception ----------


@pytest.mark.parametrize("name", [ENTRIES_FILE, MANIFEST_FILE, CHECKPOINT_FILE])
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_bundle_file_that_is_not_a_regular_file_is_refused_without_reading_it(
    bundle: Path, name: str, kind: str
) -> None:
    # A FIFO with no writer, or a symlink to /dev/zero, made the verifier wait or read forever.
    target = bundle / name
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target.symlink_to("/dev/zero")
    else:
        target.mkdir()
    done: list[BaseException | None] = []

    def run() -> None:
        try:
            verify_bundle(bundle, SIGNER.public_key)
        except BaseException as exc:
            done.append(exc)
        else:
            done.append(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert done, f"the verifier hung on a {kind} {name}"
    assert isinstance(done[0], VerificationError), done[0]
    assert "not a regular file" in str(done[0])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("purpose", "[" * 100_000),
        ("from", "9" * 5_000),
        ("root", '"\u00e9" '),
    ],
)
def test_a_signed_manifest_with_hostile_values_is_a_clean_failure(
    bundle: Path, field: str, value: str
) -> None:
    # Signed with the log's key: what a hostile or broken log could hand out.
    raw = (bundle / MANIFEST_FILE).read_text()
    obj_start = raw.index(f'"{field}":') + len(f'"{field}":')
    end = raw.index("\n", obj_start)
    tail = "," if raw[end - 1] == "," else ""
    hostile = (raw[:obj_start] + " " + value.strip() + tail + raw[end:]).encode()
    (bundle / MANIFEST_FILE).write_bytes(hostile)
    (bundle / MANIFEST_SIGNATURE_FILE).write_bytes(SIGNER.sign_bytes(hostile))
    with pytest.raises(VerificationError):
        verify_bundle(bundle, SIGNER.public_key)


@pytest.mark.parametrize("full_parse", [False, True])
@pytest.mark.parametrize(
    "line", [b"[" * 100_000, b'{"index":' + b"9" * 5_000 + b"}", b'{"data":' + b"[" * 100_000]
)
def test_a_resealed_hostile_line_is_a_clean_failure(
    bundle: Path, line: bytes, full_parse: bool
) -> None:
    lines = _lines(bundle)
    lines[3] = line
    _write_lines(bundle, lines)
    _reseal(bundle)
    with pytest.raises(VerificationError) as failed:
        verify_bundle(bundle, SIGNER.public_key, full_parse=full_parse)
    assert failed.value.line == 4


# --- one key, two signed formats -----------------------------------------------------------------
# The log's key signs checkpoint notes (the C2SP body: origin, size, root, three lines) and the
# raw bytes of export manifests, with no domain prefix in either. What keeps one from passing for
# the other is their shapes: a manifest is indented JSON of many lines, which no checkpoint
# parse accepts, and a checkpoint body is three lines that no JSON parse accepts. These tests fail
# if either format changes so that the other could be signed for it.


def _note_from(text: bytes, signature: bytes) -> str:
    """A signed note whose text is ``text`` and whose one signature is ``signature`` by SIGNER."""
    encoded = base64.b64encode(SIGNER.key_id + signature).decode("ascii")
    return f"{text.decode()}\n\u2014 {SIGNER.name} {encoded}\n"


def test_a_manifest_and_its_signature_never_pass_for_a_checkpoint(bundle: Path) -> None:
    manifest = (bundle / MANIFEST_FILE).read_bytes()
    forged = _note_from(manifest, (bundle / MANIFEST_SIGNATURE_FILE).read_bytes())
    # The signature is genuine over the note's text: only the checkpoint parse can refuse it.
    assert split_note(forged)[0].encode() == manifest
    assert verify_note(forged, SIGNER.public_key, ORIGIN) == manifest.decode()
    with pytest.raises(CheckpointError, match="lines"):
        verify_checkpoint(forged, SIGNER.public_key, ORIGIN)


@given(
    origin=st.text(
        st.characters(codec="utf-8", exclude_characters="\n", exclude_categories=("Cs", "Cc")),
        min_size=1,
        max_size=40,
    ),
    size=st.integers(min_value=0, max_value=2**63 - 1),
    root=st.binary(min_size=32, max_size=32),
)
@settings(max_examples=200, deadline=None)
def test_no_checkpoint_body_passes_for_a_manifest(origin: str, size: int, root: bytes) -> None:
    try:
        body = Checkpoint(origin, size, root).body()
    except CheckpointError:
        return  # not an origin a checkpoint takes
    with pytest.raises(VerificationError) as refused:
        Manifest.from_json(body)
    assert refused.value.check == "manifest"


def test_a_checkpoint_and_its_signature_never_pass_for_a_manifest(bundle: Path) -> None:
    note = _checkpoint(LOG, 20)
    text, signatures = split_note(note)
    ((_, signed),) = signatures
    (bundle / MANIFEST_FILE).write_bytes(text.encode())
    (bundle / MANIFEST_SIGNATURE_FILE).write_bytes(signed[len(SIGNER.key_id) :])
    with pytest.raises(VerificationError) as refused:
        verify_bundle(bundle, SIGNER.public_key)
    # Past the signature check (it is genuine), refused as a manifest.
    assert refused.value.check == "manifest"
