"""Export bundle writer: entries [start, start + n) of the log as files an auditor verifies offline.

Streamed: entries are hashed (file SHA-256 and Merkle leaves) as they are written, in bounded
batches, so memory stays flat however many entries there are and no file is read back. The
format (file names, manifest) is defined in audit/verify.py, next to the code that checks it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from pathlib import Path

from audit.checkpoint import Checkpoint, CheckpointSigner, public_key_pem
from audit.merkle import CompactRange
from audit.verify import (
    CHECKPOINT_FILE,
    ENTRIES_FILE,
    MANIFEST_FILE,
    MANIFEST_SIGNATURE_FILE,
    PREFIX_FILE,
    PUBLIC_KEY_FILE,
    FileDigest,
    Manifest,
    RootBuilder,
    first_bad_line,
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


def _write_entries(
    path: Path, entries: Iterable[bytes], prefix: CompactRange, origin: str
) -> tuple[FileDigest, CompactRange]:
    """Stream entries to path as lines; their file digest and the compact range after them.

    Entries are handled in batches: checked (verify.first_bad_line), hashed into the tree
    (verify.RootBuilder, the verifier's own code) and written, so per-entry interpreter work
    is small and memory is bounded by one batch.
    """
    marker = log_marker(origin)
    builder = RootBuilder(prefix, None)
    next_index = prefix.size
    file_hash = hashlib.sha256()
    file_bytes = 0
    batch: list[bytes] = []
    with path.open("xb") as handle:
        iterator = iter(entries)
        while True:
            batch[:] = itertools.islice(iterator, _WRITE_BATCH)
            if not batch:
                break
            batch.append(b"")  # the join then ends in a newline
            data = b"\n".join(batch)
            del batch[-1]
            # A line break inside an entry would split it into two lines of the export.
            suspect = data.count(b"\n") != len(batch) or b"\r" in data
            bad = first_bad_line(batch, next_index, marker, suspect=suspect)
            if bad is not None:
                raise BundleError(
                    f"entry {next_index + bad - prefix.size} is not a canonical entry of "
                    f"{origin!r} with index {next_index + bad} on one line"
                )
            builder.add_lines(batch)
            handle.write(data)
            file_hash.update(data)
            file_bytes += len(data)
            next_index += len(batch)
    return FileDigest(file_hash.hexdigest(), file_bytes), builder.finish()


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

    entries_digest, compact = _write_entries(out_dir / ENTRIES_FILE, entries, prefix, origin)

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
