"""Export bundle writer: entries [start, start + n) of the log as files an auditor verifies offline.

Streamed: entries are hashed (file SHA-256 and Merkle leaves) as they are written, in bounded
batches, so memory stays flat however many entries there are and no file is read back. The
format (file names, manifest) is defined in audit/verify.py, next to the code that checks it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from audit.checkpoint import Checkpoint, CheckpointSigner, public_key_pem
from audit.merkle import CompactRange
from audit.verify import (
    CHECKPOINT_FILE,
    ENTRIES_FILE,
    ENTRY_INDEX_KEY,
    ENTRY_LINE_END,
    ENTRY_LINE_START,
    MANIFEST_FILE,
    MANIFEST_SIGNATURE_FILE,
    PREFIX_FILE,
    PUBLIC_KEY_FILE,
    FileDigest,
    Manifest,
    log_marker,
)

_BUNDLE_FILES = (ENTRIES_FILE, CHECKPOINT_FILE, PREFIX_FILE, PUBLIC_KEY_FILE)
# Lines per write: large enough that per-write overhead vanishes, small enough to stay flat.
_WRITE_BATCH = 8192


class BundleError(ValueError):
    """The entries or arguments cannot make a valid bundle; nothing that verifies is written."""


def _write_small(path: Path, data: bytes) -> FileDigest:
    with path.open("xb") as handle:  # never overwrite: an export is evidence
        handle.write(data)
    return FileDigest(hashlib.sha256(data).hexdigest(), len(data))


def _flush(handle: BinaryIO, batch: list[bytes], file_hash: hashlib._Hash, first: int) -> int:
    """Write a batch of entries as lines, hash them, empty the batch; bytes written.

    `first` is the position in the export of the batch's first entry, for the error message.
    """
    batch.append(b"")  # the join then ends in a newline
    data = b"\n".join(batch)
    # Line breaks inside entries are looked for once per batch, not once per entry.
    if data.count(b"\n") != len(batch) - 1 or b"\r" in data:
        bad = next(n for n, entry in enumerate(batch) if b"\n" in entry or b"\r" in entry)
        raise BundleError(f"entry {first + bad} contains a line break")
    handle.write(data)
    file_hash.update(data)
    batch.clear()
    return len(data)


def _write_entries(
    path: Path, entries: Iterable[bytes], compact: CompactRange, origin: str
) -> FileDigest:
    """Stream entries to path as lines while extending `compact` with their leaf hashes."""
    hashes = compact.hashes
    start = size = compact.size
    marker = log_marker(origin)
    index_key, index_key_size = ENTRY_INDEX_KEY, len(ENTRY_INDEX_KEY)
    line_start, line_end = ENTRY_LINE_START, ENTRY_LINE_END
    file_hash = hashlib.sha256()
    file_bytes = 0
    sha256 = hashlib.sha256
    batch: list[bytes] = []
    with path.open("xb") as handle:
        for entry in entries:
            # verify.entry_line_matches inlined: the call overhead alone was a third of the
            # writer's time. The `%d,` test pins the whole index (no longer number can follow).
            position = entry.rfind(index_key)
            if (
                position < 0
                or not entry.startswith(b"%d," % size, position + index_key_size)
                or not entry.startswith(line_start)
                or not entry.endswith(line_end)
                or entry.find(marker, position) < 0
            ):
                raise BundleError(
                    f"entry {size - start} is not a canonical entry of {origin!r} with index {size}"
                )
            batch.append(entry)
            hashes.append(sha256(b"\x00" + entry).digest())
            bits = size
            while bits & 1:
                right = hashes.pop()
                hashes[-1] = sha256(b"\x01" + hashes[-1] + right).digest()
                bits >>= 1
            size += 1
            if len(batch) >= _WRITE_BATCH:
                file_bytes += _flush(handle, batch, file_hash, size - len(batch) - start)
        if batch:
            file_bytes += _flush(handle, batch, file_hash, size - len(batch) - start)
    compact.size = size
    return FileDigest(file_hash.hexdigest(), file_bytes)


def write_bundle(
    out_dir: Path,
    entries: Iterable[bytes],
    *,
    start: int,
    prefix: CompactRange,
    signer: CheckpointSigner,
    origin: str,
    purpose: str | None = None,
) -> Manifest:
    """Write entries (exact leaf bytes, index start onwards) and a signed manifest to out_dir.

    `prefix` is the compact range of [0, start). Every entry is checked to carry its expected
    index and this origin before it is written, so a store bug yields an error here rather than a
    bundle that fails in the auditor's hands. out_dir may exist but must not hold bundle files.
    """
    if prefix.size != start:
        raise BundleError(f"prefix compact range has size {prefix.size}, start is {start}")
    if signer.name != origin:
        # The verifier checks the checkpoint under the key name = origin (C2SP recommends it).
        raise BundleError(f"signer key name {signer.name!r} is not the origin {origin!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*_BUNDLE_FILES, MANIFEST_FILE, MANIFEST_SIGNATURE_FILE):
        if (out_dir / name).exists():
            # Checked up front so a refused export leaves nothing half-written behind.
            raise FileExistsError(f"{out_dir / name} exists; an export never overwrites")

    compact = prefix.copy()
    entries_digest = _write_entries(out_dir / ENTRIES_FILE, entries, compact, origin)

    checkpoint_note = signer.sign(Checkpoint(origin, compact.size, compact.root())).encode()
    files = {
        ENTRIES_FILE: entries_digest,
        CHECKPOINT_FILE: _write_small(out_dir / CHECKPOINT_FILE, checkpoint_note),
        PREFIX_FILE: _write_small(out_dir / PREFIX_FILE, prefix.to_lines().encode("ascii")),
        PUBLIC_KEY_FILE: _write_small(
            out_dir / PUBLIC_KEY_FILE, public_key_pem(signer.public_key).encode("ascii")
        ),
    }
    manifest = Manifest(
        origin=origin,
        start=start,
        end=compact.size,
        root=compact.root(),
        checkpoint_sha256=files[CHECKPOINT_FILE].sha256,
        files=files,
        vkey=signer.verifier_key(),
        key_id=signer.key_id.hex(),
        purpose=purpose,
    )
    manifest_bytes = manifest.to_json()
    _write_small(out_dir / MANIFEST_FILE, manifest_bytes)
    # Written last: a bundle interrupted before this point never verifies.
    _write_small(out_dir / MANIFEST_SIGNATURE_FILE, signer.sign_bytes(manifest_bytes))
    return manifest
