"""Offline verifier for audit export bundles: `python -m audit.verify DIR --key PUB.pem`.

An auditor runs this without the service, so it imports only the standard library,
`cryptography`, audit.merkle and audit.checkpoint (which obey the same rule; a test parses the
imports). It also defines the bundle format (file names, manifest), so the writer in
audit/bundle.py imports it from here and the two cannot drift apart.

Checks, in order, stopping at the first failure: the manifest's Ed25519 signature; the manifest
itself and its verifier key; each file's SHA-256 and size; the checkpoint's signature (key name =
origin); the prefix compact range; every line of entries.jsonl (framing, index, log); the
recomputed root against the checkpoint; and with --previous, that the earlier checkpoint is
signed by the same key, is not larger, and is a prefix of this tree.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_public_key_pem,
    parse_checkpoint_note,
    parse_verifier_key,
    verify_checkpoint,
)
from audit.merkle import EMPTY_ROOT, HASH_SIZE, CompactRange, CompactRangeError

BUNDLE_FORMAT_VERSION = 1
ENTRIES_FILE = "entries.jsonl"
CHECKPOINT_FILE = "checkpoint"
PREFIX_FILE = "prefix.compact"
MANIFEST_FILE = "manifest.json"
MANIFEST_SIGNATURE_FILE = "manifest.json.sig"
PUBLIC_KEY_FILE = "audit-log-pub.pem"
REQUIRED_FILES = (ENTRIES_FILE, CHECKPOINT_FILE, PREFIX_FILE)

# Small files are read whole; anything bigger than this is not a manifest or a checkpoint.
_MAX_SMALL_FILE = 1 << 20
_READ_SIZE = 1 << 20
_ED25519_SIGNATURE_SIZE = 64
# Every leaf is canonical JSON whose sorted keys are actor, data, index, kind, log, subject,
# time, v. The line therefore starts and ends with fixed text, and everything after `data` is a
# short run of scalars. A JSON string never contains an unescaped quote, so the last
# `,"index":` in a line is the top-level key: index and log are checked by exact byte
# comparison instead of parsing 300 bytes of JSON per line.
ENTRY_LINE_START = b'{"actor":'
ENTRY_LINE_END = b',"v":1}'
ENTRY_INDEX_KEY = b',"index":'
# The leaf's keys (audit/entry.py, repeated here because the verifier may not import it).
ENTRY_KEYS = frozenset({"actor", "data", "index", "kind", "log", "subject", "time", "v"})


def log_marker(origin: str) -> bytes:
    """The bytes that follow the kind in a canonical entry of this log, up to `subject`."""
    # json.dumps with ensure_ascii=False escapes exactly as RFC 8785 does for origins, which
    # contain no control characters (checkpoint origins may not).
    return b'","log":' + json.dumps(origin, ensure_ascii=False).encode() + b',"subject":'


def entry_line_matches(line: bytes, index: int, marker: bytes) -> bool:
    """Cheap exact check that `line` is one canonical entry with this index and log marker.

    first_bad_line applies the same test to a whole chunk of lines at once.
    """
    position = line.rfind(ENTRY_INDEX_KEY)
    return (
        position >= 0
        and line.startswith(b"%d," % index, position + len(ENTRY_INDEX_KEY))
        and line.startswith(ENTRY_LINE_START)
        and line.endswith(ENTRY_LINE_END)
        and line.find(marker, position) >= 0
        and b"\n" not in line
        and b"\r" not in line
    )


class VerificationError(Exception):
    """The first check that failed; `check` names it, `line` is the 1-based entries.jsonl line."""

    def __init__(self, check: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.line = line

    def __str__(self) -> str:
        return f"{self.check}: {self.args[0]}"


@dataclass(frozen=True)
class FileDigest:
    sha256: str  # hex
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """What manifest.json says; its exact bytes are what manifest.json.sig signs."""

    origin: str
    start: int  # "from": first index in entries.jsonl
    end: int  # "to": tree size after the last entry = checkpoint size
    root: bytes
    checkpoint_sha256: str
    files: Mapping[str, FileDigest]
    vkey: str
    key_id: str  # hex
    purpose: str | None = None
    version: int = BUNDLE_FORMAT_VERSION

    def to_json(self) -> bytes:
        obj = {
            "version": self.version,
            "origin": self.origin,
            "from": self.start,
            "to": self.end,
            "root": base64.b64encode(self.root).decode("ascii"),
            "checkpoint_sha256": self.checkpoint_sha256,
            "files": {
                name: {"sha256": digest.sha256, "bytes": digest.bytes}
                for name, digest in sorted(self.files.items())
            },
            "vkey": self.vkey,
            "key_id": self.key_id,
            "purpose": self.purpose,
        }
        # ASCII-only and sorted: the bytes are stable and readable on any terminal.
        return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            obj = json.loads(raw)
        # Not UTF-8 or JSON, nested too deep, or a number too long to convert.
        except (ValueError, RecursionError) as exc:
            raise VerificationError("manifest", f"{MANIFEST_FILE} is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise VerificationError("manifest", f"{MANIFEST_FILE} is not a JSON object")

        def field(name: str, kind: type | tuple[type, ...]) -> Any:
            value = obj.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise VerificationError(
                    "manifest", f"{MANIFEST_FILE}: {name!r} missing or wrong type"
                )
            return value

        version = field("version", int)
        if version != BUNDLE_FORMAT_VERSION:
            raise VerificationError("manifest", f"unsupported bundle format version {version}")
        start, end = field("from", int), field("to", int)
        if not 0 <= start <= end:
            raise VerificationError("manifest", f"range from={start} to={end} is invalid")
        try:
            root = base64.b64decode(field("root", str), validate=True)
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            raise VerificationError("manifest", "'root' is not base64") from None
        if len(root) != HASH_SIZE:
            raise VerificationError("manifest", f"'root' is {len(root)} bytes, not {HASH_SIZE}")
        files: dict[str, FileDigest] = {}
        for name, entry in field("files", dict).items():
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("bytes"), int)
                or isinstance(entry.get("bytes"), bool)
            ):
                raise VerificationError("manifest", f"file entry {name!r} is malformed")
            # Only plain names in the bundle directory: a manifest must not point elsewhere.
            if name in {"", ".", ".."} or "/" in name or "\\" in name or "\0" in name:
                raise VerificationError("manifest", f"file name {name!r} is not a plain name")
            files[name] = FileDigest(entry["sha256"], entry["bytes"])
        for name in REQUIRED_FILES:
            if name not in files:
                raise VerificationError("manifest", f"{MANIFEST_FILE} does not list {name}")
        purpose = obj.get("purpose")
        if purpose is not None and not isinstance(purpose, str):
            raise VerificationError("manifest", "'purpose' is not a string")
        return cls(
            origin=field("origin", str),
            start=start,
            end=end,
            root=root,
            checkpoint_sha256=field("checkpoint_sha256", str),
            files=files,
            vkey=field("vkey", str),
            key_id=field("key_id", str),
            purpose=purpose,
            version=version,
        )


@dataclass(frozen=True)
class VerifyResult:
    origin: str
    start: int
    end: int
    root: bytes
    checkpoint: Checkpoint
    previous: Checkpoint | None = None

    def summary(self) -> str:
        text = (
            f"OK {self.origin}: entries [{self.start}, {self.end}) verified, "
            f"root {base64.b64encode(self.root).decode()} signed at size {self.checkpoint.size}"
        )
        if self.previous is not None:
            text += f"; extends previous checkpoint of size {self.previous.size}"
        return text


def _open_regular(path: Path, check: str) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file. A bundle is untrusted input: a FIFO,
    a device (say, a symlink to /dev/zero) or a directory would make a read block or never end,
    so each is refused before it is read (opened non-blocking, so that a FIFO's open returns)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise VerificationError(check, f"cannot read {path.name}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VerificationError(check, f"{path.name} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_small(path: Path, check: str) -> bytes:
    with _open_regular(path, check) as handle:
        try:
            data = handle.read(_MAX_SMALL_FILE + 1)
        except OSError as exc:
            raise VerificationError(check, f"cannot read {path.name}: {exc.strerror}") from None
    if len(data) > _MAX_SMALL_FILE:
        raise VerificationError(check, f"{path.name} is larger than {_MAX_SMALL_FILE} bytes")
    return data


def _file_digest(path: Path, limit: int) -> FileDigest:
    """SHA-256 and size of the file, reading no more than ``limit`` + 1 bytes: a file longer than
    the manifest says is refused without reading all of it."""
    digest = hashlib.sha256()
    size = 0
    with _open_regular(path, "file hash") as handle:
        while size <= limit and (chunk := handle.read(min(_READ_SIZE, limit + 1 - size))):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(digest.hexdigest(), size)


def _check_manifest(bundle_dir: Path, public_key: Ed25519PublicKey) -> Manifest:
    raw = _read_small(bundle_dir / MANIFEST_FILE, "manifest")
    signature = _read_small(bundle_dir / MANIFEST_SIGNATURE_FILE, "manifest signature")
    if len(signature) != _ED25519_SIGNATURE_SIZE:
        raise VerificationError(
            "manifest signature",
            f"{MANIFEST_SIGNATURE_FILE} is {len(signature)} bytes, not a raw 64-byte signature",
        )
    try:
        public_key.verify(signature, raw)
    except InvalidSignature:
        raise VerificationError(
            "manifest signature", f"{MANIFEST_FILE} is not signed by the given key"
        ) from None
    manifest = Manifest.from_json(raw)
    try:
        name, vkey_id, vkey_public = parse_verifier_key(manifest.vkey)
    except CheckpointError as exc:
        raise VerificationError("manifest", f"verifier key: {exc}") from None
    if name != manifest.origin or vkey_public != public_key or vkey_id.hex() != manifest.key_id:
        raise VerificationError(
            "manifest", "verifier key in the manifest does not match the origin and the given key"
        )
    return manifest


def _check_files(bundle_dir: Path, manifest: Manifest) -> None:
    for name, expected in sorted(manifest.files.items()):
        try:
            actual = _file_digest(bundle_dir / name, expected.bytes)
        except OSError as exc:
            raise VerificationError("file hash", f"cannot read {name}: {exc.strerror}") from None
        if actual.bytes != expected.bytes:
            raise VerificationError(
                "file hash",
                f"{name} is {actual.bytes} bytes, the manifest says {expected.bytes} "
                "(truncated or altered)",
            )
        if actual.sha256 != expected.sha256:
            raise VerificationError("file hash", f"{name}: SHA-256 does not match the manifest")


def _check_checkpoint(
    bundle_dir: Path, manifest: Manifest, public_key: Ed25519PublicKey
) -> Checkpoint:
    raw = _read_small(bundle_dir / CHECKPOINT_FILE, "checkpoint")
    if hashlib.sha256(raw).hexdigest() != manifest.checkpoint_sha256:
        raise VerificationError("checkpoint", "checkpoint SHA-256 does not match the manifest")
    try:
        note = raw.decode("utf-8")
        checkpoint = verify_checkpoint(note, public_key, manifest.origin)
    except (UnicodeDecodeError, CheckpointError) as exc:
        raise VerificationError("checkpoint signature", f"{CHECKPOINT_FILE}: {exc}") from None
    if checkpoint.origin != manifest.origin:
        raise VerificationError(
            "checkpoint", f"checkpoint origin {checkpoint.origin!r} is not {manifest.origin!r}"
        )
    if checkpoint.size != manifest.end:
        raise VerificationError(
            "checkpoint",
            f"checkpoint size {checkpoint.size} is not the manifest's to={manifest.end}",
        )
    if checkpoint.root != manifest.root:
        raise VerificationError("checkpoint", "checkpoint root is not the manifest's root")
    return checkpoint


def _check_prefix(bundle_dir: Path, manifest: Manifest) -> CompactRange:
    raw = _read_small(bundle_dir / PREFIX_FILE, "prefix")
    try:
        return CompactRange.from_lines(manifest.start, raw.decode("ascii"))
    except (UnicodeDecodeError, CompactRangeError) as exc:
        raise VerificationError(
            "prefix", f"{PREFIX_FILE} is not the compact range of [0, {manifest.start}): {exc}"
        ) from None


def _check_previous(
    previous_note: str, manifest: Manifest, public_key: Ed25519PublicKey
) -> Checkpoint:
    try:
        previous = verify_checkpoint(previous_note, public_key, manifest.origin)
    except CheckpointError as exc:
        raise VerificationError("previous", f"previous checkpoint: {exc}") from None
    if previous.origin != manifest.origin:
        raise VerificationError("previous", "previous checkpoint is from another log")
    if previous.size > manifest.end:
        raise VerificationError(
            "previous",
            f"size went down: previous checkpoint has size {previous.size}, "
            f"this export's checkpoint only {manifest.end} (rollback or truncation)",
        )
    if 0 < previous.size < manifest.start:  # the empty tree is a prefix of every tree
        raise VerificationError(
            "previous",
            f"consistency cannot be established from this bundle: the previous checkpoint "
            f"(size {previous.size}) predates its first entry ({manifest.start}); "
            f"export from {previous.size} or from 0 instead",
        )
    return previous


def _describe_bad_line(line: bytes, line_no: int, index: int, log_json: bytes) -> VerificationError:
    """Say precisely what is wrong with a line the fast check rejected (slow path, once)."""

    def fail(message: str) -> VerificationError:
        return VerificationError("entry", f"{ENTRIES_FILE} line {line_no}: {message}", line_no)

    if not line:
        return fail("blank line")
    if b"\r" in line:
        return fail("contains a carriage return")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # not UTF-8 or JSON, too deep, too big a number
        return fail(f"not JSON ({exc})")
    if not isinstance(obj, dict):
        return fail("not a JSON object")
    actual_index = obj.get("index")
    if actual_index != index:
        return fail(
            f"index is {actual_index!r}, expected {index} "
            "(an entry is missing, inserted or out of order)"
        )
    if obj.get("log") != json.loads(log_json):
        return fail(f"log is {obj.get('log')!r}, expected {json.loads(log_json)!r}")
    return fail("not a canonical entry (keys, order or spacing)")


def first_bad_line(
    lines: list[bytes], first_index: int, marker: bytes, suspect: bool = False
) -> int | None:
    """Offset of the first line that is not the canonical entry expected at its position.

    entry_line_matches over a whole chunk in one generator, which costs far less interpreter
    time than a statement-level loop. `suspect` (the chunk holds a CR or a stray newline) skips
    straight to the line-by-line test, which also looks for line breaks.
    """
    line_start, line_end = ENTRY_LINE_START, ENTRY_LINE_END
    expected = [b"%d," % index for index in range(first_index, first_index + len(lines))]
    positions = [line.rfind(ENTRY_INDEX_KEY) for line in lines]
    if not suspect and all(
        position >= 0
        and line.startswith(index, position + 9)  # 9 = len(ENTRY_INDEX_KEY)
        and line.startswith(line_start)
        and line.endswith(line_end)
        and line.find(marker, position) >= 0
        for line, index, position in zip(lines, expected, positions, strict=True)
    ):
        return None
    for offset, line in enumerate(lines):
        if not entry_line_matches(line, first_index + offset, marker):
            return offset
    return None


def _check_lines(
    lines: list[bytes], first_index: int, first_line_no: int, has_cr: bool, context: _LineContext
) -> None:
    """Raise for the first line that is not the canonical entry expected at its position."""
    if first_index + len(lines) > context.end:
        allowed = context.end - first_index
        _check_lines(lines[:allowed], first_index, first_line_no, has_cr, context)
        line_no = first_line_no + allowed
        raise VerificationError(
            "entry",
            f"{ENTRIES_FILE} line {line_no}: more entries than the checkpoint covers "
            f"(size {context.end})",
            line_no,
        )
    # None also when the CR is in the carried-over start of the next chunk's first line.
    offset = first_bad_line(lines, first_index, context.marker, suspect=has_cr)
    if offset is not None:
        raise _describe_bad_line(
            lines[offset], first_line_no + offset, first_index + offset, context.log_json
        )


@dataclass(frozen=True)
class _LineContext:
    end: int
    marker: bytes
    log_json: bytes


_BLOCK_HEIGHT = 10
_BLOCK = 1 << _BLOCK_HEIGHT


class RootBuilder:
    """Compact range fed with entry lines in bulk (shared by the verifier and the writer).

    Aligned runs of _BLOCK leaves are reduced level by level with list comprehensions and
    appended as one perfect subtree; only unaligned leaves (a delta export's start, the tail,
    the leaves around a snapshot) take the one-at-a-time RFC 9162 §2.1.2 path.
    """

    __slots__ = ("hashes", "pending", "size", "snapshot_root", "snapshot_size")

    def __init__(self, prefix: CompactRange, snapshot_size: int | None) -> None:
        self.hashes = list(prefix.hashes)
        self.size = prefix.size
        self.pending: list[bytes] = []
        self.snapshot_size = -1 if snapshot_size is None else snapshot_size
        self.snapshot_root = prefix.root() if snapshot_size == prefix.size else None

    def add_lines(self, lines: list[bytes]) -> None:
        sha256 = hashlib.sha256
        self.pending += [sha256(b"\x00" + line).digest() for line in lines]
        self._drain(final=False)

    def finish(self) -> CompactRange:
        self._drain(final=True)
        return CompactRange(self.size, self.hashes)

    def _drain(self, final: bool) -> None:
        sha256 = hashlib.sha256
        pending, hashes, size, snapshot = self.pending, self.hashes, self.size, self.snapshot_size
        taken = 0
        count = len(pending)
        while taken < count:
            aligned = not size & (_BLOCK - 1)
            snapshot_inside = size < snapshot < size + _BLOCK
            if aligned and count - taken >= _BLOCK and not snapshot_inside:
                level = pending[taken : taken + _BLOCK]
                while len(level) > 1:
                    level = [
                        sha256(b"\x01" + left + right).digest()
                        for left, right in zip(level[::2], level[1::2], strict=True)
                    ]
                hashes.append(level[0])
                bits = size >> _BLOCK_HEIGHT
                taken += _BLOCK
                size += _BLOCK
            elif aligned and not final and not snapshot_inside:
                break  # wait for a full block
            else:
                hashes.append(pending[taken])
                bits = size
                taken += 1
                size += 1
            while bits & 1:
                right = hashes.pop()
                hashes[-1] = sha256(b"\x01" + hashes[-1] + right).digest()
                bits >>= 1
            if size == snapshot:
                self.snapshot_root = CompactRange(size, list(hashes)).root()
        del pending[:taken]
        self.size = size


def _verify_entries(
    path: Path,
    manifest: Manifest,
    prefix: CompactRange,
    snapshot_size: int | None,
    full_parse: bool,
) -> tuple[CompactRange, bytes | None]:
    """Stream entries.jsonl; the compact range after it, and the root at snapshot_size."""
    context = _LineContext(
        end=manifest.end,
        marker=log_marker(manifest.origin),
        log_json=json.dumps(manifest.origin, ensure_ascii=False).encode(),
    )
    builder = RootBuilder(prefix, snapshot_size)
    next_index = prefix.size
    line_no = 0  # lines seen so far; messages count from 1
    carry = b""
    with _open_regular(path, "entry") as handle:
        while chunk := handle.read(_READ_SIZE):
            data = carry + chunk
            lines = data.split(b"\n")
            carry = lines.pop()  # incomplete last line, continued by the next chunk
            _check_lines(lines, next_index, line_no + 1, b"\r" in data, context)
            if full_parse:
                for offset, line in enumerate(lines):
                    _full_parse(line, line_no + 1 + offset, next_index + offset, manifest.origin)
            builder.add_lines(lines)
            next_index += len(lines)
            line_no += len(lines)
    if carry:
        raise VerificationError(
            "entry",
            f"{ENTRIES_FILE} line {line_no + 1}: no final newline (truncated or trailing bytes)",
            line_no + 1,
        )
    if next_index != manifest.end:
        raise VerificationError(
            "entry",
            f"{ENTRIES_FILE} ends after {next_index - manifest.start} entries "
            f"(index {next_index - 1}); the checkpoint covers up to size {manifest.end}",
            line_no,
        )
    compact = builder.finish()
    return compact, builder.snapshot_root


def _full_parse(line: bytes, line_no: int, index: int, origin: str) -> None:
    """json.loads the line and check its top-level fields (the --full-parse option)."""

    def fail(message: str) -> VerificationError:
        return VerificationError("entry", f"{ENTRIES_FILE} line {line_no}: {message}", line_no)

    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # not UTF-8 or JSON, too deep, too big a number
        raise fail(f"not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise fail("not a JSON object")
    if set(obj) != ENTRY_KEYS:
        raise fail(f"keys are {sorted(obj)}, expected {sorted(ENTRY_KEYS)}")
    if obj["index"] != index or obj["log"] != origin or obj["v"] != 1:
        raise fail("index, log or v differ from the byte-level reading (nested look-alike keys)")


def verify_bundle(
    bundle_dir: Path,
    public_key: Ed25519PublicKey,
    previous_checkpoint: str | None = None,
    *,
    full_parse: bool = False,
) -> VerifyResult:
    """Verify an export bundle; raises VerificationError naming the first failed check.

    full_parse additionally runs every line through json.loads. It is off by default because
    it triples the cost, and it proves little more: the fast path already checks each line's
    framing, index and log byte for byte, and the Merkle root pins every byte of every line to
    the signed checkpoint.
    """
    manifest = _check_manifest(bundle_dir, public_key)
    _check_files(bundle_dir, manifest)
    checkpoint = _check_checkpoint(bundle_dir, manifest, public_key)
    prefix = _check_prefix(bundle_dir, manifest)
    # The previous checkpoint is judged after the bundle itself (documented order), but its
    # size is needed now: the root at that size is taken while streaming.
    snapshot_size = None
    if previous_checkpoint is not None:
        with contextlib.suppress(CheckpointError):  # _check_previous reports it below
            snapshot_size = parse_checkpoint_note(previous_checkpoint)[0].size
    compact, previous_root = _verify_entries(
        bundle_dir / ENTRIES_FILE, manifest, prefix, snapshot_size, full_parse
    )
    if compact.root() != checkpoint.root:
        raise VerificationError(
            "root",
            f"the root recomputed from {ENTRIES_FILE} does not match the signed checkpoint "
            "(an entry was altered, or the prefix compact range is wrong)",
        )
    previous = None
    if previous_checkpoint is not None:
        previous = _check_previous(previous_checkpoint, manifest, public_key)
        expected = EMPTY_ROOT if previous.size == 0 else previous_root
        if expected != previous.root:
            raise VerificationError(
                "previous",
                f"previous checkpoint (size {previous.size}) is not a prefix of this tree: "
                "the log was rewritten (fork)",
            )
    return VerifyResult(
        origin=manifest.origin,
        start=manifest.start,
        end=manifest.end,
        root=checkpoint.root,
        checkpoint=checkpoint,
        previous=previous,
    )


class _UsageError(Exception):
    pass


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m audit.verify",
        description="Verify a FairUnlock audit export bundle offline.",
    )
    parser.add_argument("bundle", type=Path, help="the export directory")
    parser.add_argument("--key", type=Path, required=True, help="the log's public key (PEM)")
    parser.add_argument(
        "--previous", type=Path, help="a checkpoint you hold from before; must be a prefix"
    )
    parser.add_argument(
        "--full-parse", action="store_true", help="also parse every line as JSON (slower)"
    )
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on bad usage; main returns a code instead
        if exc.code:
            raise _UsageError from None
        raise


def main(argv: list[str] | None = None) -> int:
    """0 verified, 1 verification failed, 2 usage error; never a traceback."""
    try:
        args = _parse_args(argv)
    except _UsageError:
        return 2
    except SystemExit:  # --help
        return 0
    try:
        public_key = load_public_key_pem(args.key.read_bytes())
        previous = None
        if args.previous is not None:
            previous = args.previous.read_bytes().decode("utf-8")
        if not args.bundle.is_dir():
            raise _UsageError(f"{args.bundle} is not a directory")
    except (OSError, UnicodeDecodeError, CheckpointError, _UsageError) as exc:
        print(f"usage error: {exc}", file=sys.stderr)
        return 2
    try:
        result = verify_bundle(args.bundle, public_key, previous, full_parse=args.full_parse)
    except VerificationError as exc:
        print(f"FAILED {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an auditor gets a message, never a traceback
        print(f"FAILED internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
