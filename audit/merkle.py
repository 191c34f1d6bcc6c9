"""RFC 6962 / RFC 9162 §2.1 Merkle tree: hashing, compact ranges, proofs and their verification.

Pure code on the standard library only: the offline verifier imports this module, and an auditor
must be able to run it with nothing but Python and `cryptography` installed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
# Proof generation reads leaf hashes in slices of this many, so a DB-backed source never has to
# materialise a whole large subtree at once.
_READ_CHUNK = 65_536
# A log keeps the roots of its aligned perfect subtrees at every SUBTREE_STEP-th height (of 256,
# 65,536, ... leaves): one extra hash per 255 leaves, and any subtree's root is then the root of at
# most 255 stored roots per level instead of all its leaves.
SUBTREE_STEP = 8

# (height, index, root): the perfect subtree of leaves [index * 2**height, (index + 1) * 2**height).
Subtree = tuple[int, int, bytes]

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof (or its arguments) does not verify; the message says which check failed."""


class CompactRangeError(ValueError):
    """A serialised compact range is malformed."""


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry): the 0x00 prefix separates leaves from nodes (second preimages)."""
    return _sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """Largest power of two strictly below n (n >= 2): RFC 6962's k with k < n <= 2k."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """Compact range of [0, size): the popcount(size) perfect-subtree roots, left to right.

    It is the RFC 9162 §2.1.2 stack before the final fold, so appending is amortised O(1) and
    the whole state of a log of any size fits in at most 64 hashes.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int, hashes: list[bytes]) -> None:
        if size < 0:
            raise CompactRangeError(f"negative size {size}")
        if len(hashes) != size.bit_count():
            raise CompactRangeError(
                f"a compact range of size {size} has {size.bit_count()} hashes, got {len(hashes)}"
            )
        for position, digest in enumerate(hashes):
            if len(digest) != HASH_SIZE:
                raise CompactRangeError(f"hash {position} is {len(digest)} bytes, not {HASH_SIZE}")
        self.size = size
        self.hashes = hashes

    @classmethod
    def empty(cls) -> CompactRange:
        return cls(0, [])

    def __repr__(self) -> str:
        return f"CompactRange(size={self.size}, hashes=[{len(self.hashes)} hashes])"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self.size == other.size and self.hashes == other.hashes

    __hash__ = None  # type: ignore[assignment]  # mutable, like list

    def append(self, leaf_hash: bytes, completed: list[Subtree] | None = None) -> None:
        """Add a leaf; with ``completed``, also add to it the subtrees of a height that is a
        multiple of SUBTREE_STEP which this leaf completes (what a log stores, see above)."""
        if len(leaf_hash) != HASH_SIZE:
            raise CompactRangeError(f"leaf hash is {len(leaf_hash)} bytes, not {HASH_SIZE}")
        hashes = self.hashes
        hashes.append(leaf_hash)
        # Each trailing 1-bit of the old size is a completed subtree of the same height: merge.
        bits = self.size
        height = 0
        while bits & 1:
            right = hashes.pop()
            hashes[-1] = _sha256(_NODE_PREFIX + hashes[-1] + right).digest()
            bits >>= 1
            height += 1
            if completed is not None and height % SUBTREE_STEP == 0:
                completed.append((height, ((self.size + 1) >> height) - 1, hashes[-1]))
        self.size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        # Same algorithm as append with the attribute lookups hoisted: this is the hot loop of
        # the integrator and the bundle writer.
        hashes = self.hashes
        size = self.size
        sha256 = _sha256
        node_prefix = _NODE_PREFIX
        try:
            for digest in leaf_hashes:
                if len(digest) != HASH_SIZE:
                    raise CompactRangeError(f"leaf hash is {len(digest)} bytes, not {HASH_SIZE}")
                hashes.append(digest)
                bits = size
                while bits & 1:
                    right = hashes.pop()
                    hashes[-1] = sha256(node_prefix + hashes[-1] + right).digest()
                    bits >>= 1
                size += 1
        finally:
            # Keep size and hashes in step even if the iterable raised half-way.
            self.size = size

    def root(self) -> bytes:
        """MTH of [0, size): fold the subtree roots right to left."""
        hashes = self.hashes
        if not hashes:
            return EMPTY_ROOT
        digest = hashes[-1]
        for left in reversed(hashes[:-1]):
            digest = _sha256(_NODE_PREFIX + left + digest).digest()
        return digest

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.hashes))

    def to_lines(self) -> str:
        """One base64 hash per line, each line ending in a newline; empty text for size 0."""
        return "".join(base64.b64encode(digest).decode("ascii") + "\n" for digest in self.hashes)

    @classmethod
    def from_lines(cls, size: int, text: str) -> CompactRange:
        """Inverse of to_lines; strict, so a file with stray bytes is reported, not tolerated."""
        if text and not text.endswith("\n"):
            raise CompactRangeError("compact range text does not end with a newline")
        lines = text.split("\n")[:-1] if text else []
        hashes: list[bytes] = []
        for line_no, line in enumerate(lines, start=1):
            try:
                digest = base64.b64decode(line.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError) as exc:
                raise CompactRangeError(f"line {line_no} is not base64: {exc}") from None
            if base64.b64encode(digest).decode("ascii") != line:
                raise CompactRangeError(f"line {line_no} is not canonical base64")
            hashes.append(digest)
        return cls(size, hashes)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D) from the leaf hashes, in one streaming pass."""
    compact = CompactRange.empty()
    compact.extend(hashes)
    return compact.root()


@runtime_checkable
class LeafSource(Protocol):
    """Anything that can return leaf hashes [start, end), e.g. a database-backed store."""

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]: ...


@runtime_checkable
class SubtreeSource(LeafSource, Protocol):
    """A LeafSource that also keeps the subtree roots CompactRange.append reports: proofs then
    read O(255 per level) hashes instead of every leaf."""

    def subtree_roots(self, height: int, start: int, end: int) -> Sequence[bytes]:
        """The stored roots of height ``height`` (a multiple of SUBTREE_STEP) with indices
        [start, end), in order; fewer when some are not stored."""
        ...


class _SequenceSource:
    __slots__ = ("_hashes",)

    def __init__(self, hashes: Sequence[bytes]) -> None:
        self._hashes = hashes

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]:
        return self._hashes[start:end]


def _as_source(source: LeafSource | Sequence[bytes]) -> LeafSource:
    if isinstance(source, LeafSource):
        return source
    return _SequenceSource(source)


def _subtree_root(source: LeafSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]): from stored subtree roots where the source keeps them, else from the
    leaf hashes."""
    size = end - start
    if size >> SUBTREE_STEP and isinstance(source, SubtreeSource) and _left_aligned(start, size):
        # A range starting at a multiple of the power of two that covers it (every range of
        # RFC 6962's recursion does) is shaped like a tree of its size from 0: its root folds
        # the perfect subtrees of its size's binary decomposition, largest first.
        return prefix_range(source, start, size).root()
    return _leaf_root(source, start, end)


def prefix_range(source: LeafSource, start: int, size: int) -> CompactRange:
    """The compact range of D[start:start+size] (``start`` a multiple of the power of two that
    covers ``size``), each perfect subtree read through _perfect_root."""
    if size < 0 or start < 0 or not _left_aligned(start, size):
        # Elsewhere the pieces would not be the tree's subtrees: a wrong range, silently.
        raise ValueError(f"[{start}, {start + size}) is not aligned to a power of two")
    roots = []
    position = start
    for height in reversed(range(size.bit_length())):
        if size >> height & 1:
            roots.append(_perfect_root(source, position, height))
            position += 1 << height
    return CompactRange(size, roots)


def _left_aligned(start: int, size: int) -> bool:
    """``start`` is a multiple of the power of two that covers ``size``."""
    return start % (1 << max(size - 1, 0).bit_length()) == 0


def _perfect_root(source: LeafSource, start: int, height: int) -> bytes:
    """The root of the perfect subtree of 2**height leaves from ``start`` (a multiple of it)."""
    if isinstance(source, SubtreeSource):
        level = height - height % SUBTREE_STEP
        while level:
            first = start >> level
            count = 1 << (height - level)
            roots = source.subtree_roots(level, first, first + count)
            if len(roots) == count:
                # Roots of equal perfect subtrees combine as leaf hashes do: node_hash all the
                # way up.
                return root_from_leaf_hashes(roots)
            # Some not stored at this height: the next stored height down, then the leaves
            # (the truth), so one missing root costs 256 times more reads, not the whole block.
            level -= SUBTREE_STEP
    return _leaf_root(source, start, start + (1 << height))


def _leaf_root(source: LeafSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) from the leaf hashes, read from the source in bounded slices."""
    compact = CompactRange.empty()
    for chunk_start in range(start, end, _READ_CHUNK):
        chunk_end = min(end, chunk_start + _READ_CHUNK)
        chunk = source.leaf_hashes(chunk_start, chunk_end)
        if len(chunk) != chunk_end - chunk_start:
            # A short read would silently give a proof for a different tree.
            raise ProofError(
                f"leaf source returned {len(chunk)} hashes for [{chunk_start}, {chunk_end})"
            )
        compact.extend(chunk)
    return compact.root()


def _path(source: LeafSource, index: int, start: int, end: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[start:end]), bottom-up."""
    if end - start == 1:
        return []
    k = _split_point(end - start)
    if index < k:
        proof = _path(source, index, start, start + k)
        proof.append(_subtree_root(source, start + k, end))
    else:
        proof = _path(source, index - k, start + k, end)
        proof.append(_subtree_root(source, start, start + k))
    return proof


def _subproof(source: LeafSource, first: int, start: int, end: int, complete: bool) -> list[bytes]:
    """RFC 6962 SUBPROOF(first, D[start:end], complete)."""
    n = end - start
    if first == n:
        return [] if complete else [_subtree_root(source, start, end)]
    k = _split_point(n)
    if first <= k:
        proof = _subproof(source, first, start, start + k, complete)
        proof.append(_subtree_root(source, start + k, end))
    else:
        proof = _subproof(source, first - k, start + k, end, False)
        proof.append(_subtree_root(source, start, start + k))
    return proof


def inclusion_proof(source: LeafSource | Sequence[bytes], index: int, size: int) -> list[bytes]:
    """Audit path of leaf `index` in the tree of the first `size` leaves of `source`."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    return _path(_as_source(source), index, 0, size)


def consistency_proof(source: LeafSource | Sequence[bytes], first: int, second: int) -> list[bytes]:
    """RFC 6962 PROOF(first, D[0:second]); empty when first == second."""
    if first <= 0:
        raise ProofError(f"a consistency proof from size {first} is meaningless")
    if first > second:
        raise ProofError(f"first size {first} is larger than second size {second}")
    if first == second:
        return []
    return _subproof(_as_source(source), first, 0, second, True)


def _check_hash(name: str, digest: bytes) -> None:
    if len(digest) != HASH_SIZE:
        raise ProofError(f"{name} is {len(digest)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2; raises ProofError naming the failed check."""
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root", root)
    if index < 0 or index >= size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    for position, element in enumerate(proof):
        _check_hash(f"proof element {position}", element)
    fn = index
    sn = size - 1
    digest = leaf_hash
    for element in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            digest = node_hash(element, digest)
            if not fn & 1:
                # Right-edge node with no sibling at these levels: climb until it has one.
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            digest = node_hash(digest, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if digest != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2 plus the checks the Go reference adds; raises ProofError."""
    _check_hash("first root", first_root)
    _check_hash("second root", second_root)
    for position, element in enumerate(proof):
        _check_hash(f"proof element {position}", element)
    if first <= 0:
        raise ProofError(f"a consistency proof from size {first} is meaningless")
    if second < first:
        raise ProofError(f"second size {second} is smaller than first size {first}")
    if first == second:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if first_root != second_root:
            raise ProofError("equal sizes with different roots")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if first & (first - 1) == 0:
        # The old tree is a complete subtree of the new one, so the proof omits its root.
        path.insert(0, first_root)
    fn = first - 1
    sn = second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first_digest = second_digest = path[0]
    for element in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            first_digest = node_hash(element, first_digest)
            second_digest = node_hash(element, second_digest)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            second_digest = node_hash(second_digest, element)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if first_digest != first_root:
        raise ProofError("consistency proof does not lead to the first root")
    if second_digest != second_root:
        raise ProofError("consistency proof does not lead to the second root")
