"""RFC 6962 / RFC 9162 Merkle tree: published vectors, negative probes, and property tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    SUBTREE_STEP,
    CompactRange,
    CompactRangeError,
    ProofError,
    Subtree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    prefix_range,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((Path(__file__).parent / "rfc6962-merkle.json").read_text())
LEAVES = [leaf_hash(bytes.fromhex(item)) for item in VECTORS["leaf_inputs_hex"]]


def _hexes(hashes: Sequence[bytes]) -> list[str]:
    return [digest.hex() for digest in hashes]


def _unhex(hexes: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(item) for item in hexes]


def _reference_mth(hashes: Sequence[bytes]) -> bytes:
    """MTH straight from the RFC's recursive definition, independent of CompactRange."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha256(
        b"\x01" + _reference_mth(hashes[:k]) + _reference_mth(hashes[k:])
    ).digest()


def _flip(data: bytes, bit: int) -> bytes:
    mutable = bytearray(data)
    mutable[bit // 8] ^= 1 << (bit % 8)
    return bytes(mutable)


def _random_leaves(count: int, seed: int) -> list[bytes]:
    return [leaf_hash(f"entry {seed} {i}".encode()) for i in range(count)]


# --- published vectors -------------------------------------------------------------------------


def test_hasher_vectors_from_rfc6962_test_go() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


def test_leaf_hashes_match_vectors() -> None:
    assert _hexes(LEAVES) == VECTORS["leaf_hashes"]


@pytest.mark.parametrize("size", range(9))
def test_roots_for_sizes_0_to_8(size: int) -> None:
    expected = VECTORS["roots"][str(size)]
    assert root_from_leaf_hashes(LEAVES[:size]).hex() == expected
    compact = CompactRange.empty()
    for digest in LEAVES[:size]:
        compact.append(digest)
    assert compact.root().hex() == expected


@pytest.mark.parametrize(("key", "proof_hex"), sorted(VECTORS["inclusion"].items()))
def test_inclusion_vectors(key: str, proof_hex: list[str]) -> None:
    index, size = map(int, key.split("/"))
    root = bytes.fromhex(VECTORS["roots"][str(size)])
    assert _hexes(inclusion_proof(LEAVES, index, size)) == proof_hex
    verify_inclusion(LEAVES[index], index, size, _unhex(proof_hex), root)


@pytest.mark.parametrize(("key", "proof_hex"), sorted(VECTORS["consistency"].items()))
def test_consistency_vectors(key: str, proof_hex: list[str]) -> None:
    first, second = map(int, key.split("/"))
    first_root = bytes.fromhex(VECTORS["roots"][str(first)])
    second_root = bytes.fromhex(VECTORS["roots"][str(second)])
    assert _hexes(consistency_proof(LEAVES, first, second)) == proof_hex
    verify_consistency(first, second, first_root, second_root, _unhex(proof_hex))


# Compact ranges of the test tree, AUDIT.md §3.3 (CompactTrees() in transparency-dev/merkle).
_L1_0 = "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"
_L1_2 = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"
_L2_0 = "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
_L3_0 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
_LEAF = VECTORS["leaf_hashes"]
COMPACT_VECTORS = {
    1: [_LEAF[0]],
    2: [_L1_0],
    3: [_L1_0, _LEAF[2]],
    4: [_L2_0],
    5: [_L2_0, _LEAF[4]],
    6: [_L2_0, _L1_2],
    7: [_L2_0, _L1_2, _LEAF[6]],
    8: [_L3_0],
}


@pytest.mark.parametrize(("size", "expected"), sorted(COMPACT_VECTORS.items()))
def test_compact_range_vectors(size: int, expected: list[str]) -> None:
    compact = CompactRange.empty()
    compact.extend(LEAVES[:size])
    assert compact.size == size
    assert _hexes(compact.hashes) == expected


def test_delta_resume_from_compact_range_example() -> None:
    """AUDIT.md §3.6: the compact range of [0, 6) plus leaf d6 folds to the size-7 root."""
    compact = CompactRange.from_lines(6, CompactRange(6, _unhex([_L2_0, _L1_2])).to_lines())
    assert compact.root().hex() == VECTORS["roots"]["6"]
    compact.append(LEAVES[6])
    assert compact.root().hex() == VECTORS["roots"]["7"]


# Negative probes from transparency-dev/merkle testdata (AUDIT.md §3.7).
R8 = VECTORS["roots"]["8"]
R5 = VECTORS["roots"]["5"]
INCLUSION_PROBES = [
    pytest.param(0, 8, R8, "57726f6e674c656166", VECTORS["inclusion"]["0/8"], id="wrong-leaf"),
    pytest.param(5, 8, R8, _LEAF[5], VECTORS["inclusion"]["5/8"][:2], id="removed-component"),
    pytest.param(2, 5, R5, _LEAF[1], VECTORS["inclusion"]["1/5"], id="leafIdx-plus-1"),
    pytest.param(0, 1, "", "", [], id="empty-root-and-leaf"),
    pytest.param(8, 8, R8, _LEAF[0], [], id="index-equals-size"),
    pytest.param(0, 8, R8, _LEAF[0], [*VECTORS["inclusion"]["0/8"], _LEAF[1]], id="extra-element"),
]


@pytest.mark.parametrize(("index", "size", "root", "leaf", "proof"), INCLUSION_PROBES)
def test_inclusion_negative_probes(
    index: int, size: int, root: str, leaf: str, proof: list[str]
) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(bytes.fromhex(leaf), index, size, _unhex(proof), bytes.fromhex(root))


R6 = VECTORS["roots"]["6"]
R7 = VECTORS["roots"]["7"]
R2 = VECTORS["roots"]["2"]
CONSISTENCY_PROBES = [
    pytest.param(6, 8, R8, R6, VECTORS["consistency"]["6/8"], id="swapped-roots"),
    pytest.param(2, 5, R2, R5, VECTORS["consistency"]["2/5"][:1], id="truncated-proof"),
    pytest.param(6, 7, R6, R7, ["", *VECTORS["consistency"]["6/7"]], id="preceding-garbage"),
    pytest.param(0, 0, "646f6e277420636172652031", "646f6e277420636172652031", [], id="zero"),
    pytest.param(0, 8, R2, R8, [], id="from-empty-tree"),
    pytest.param(8, 6, R8, R6, VECTORS["consistency"]["6/8"], id="second-smaller"),
    pytest.param(8, 8, R8, R8, [_LEAF[0]], id="equal-sizes-nonempty-proof"),
    pytest.param(8, 8, R8, R7, [], id="equal-sizes-different-roots"),
    pytest.param(6, 8, R6, R8, [], id="empty-proof"),
]


@pytest.mark.parametrize(("first", "second", "root1", "root2", "proof"), CONSISTENCY_PROBES)
def test_consistency_negative_probes(
    first: int, second: int, root1: str, root2: str, proof: list[str]
) -> None:
    with pytest.raises(ProofError):
        verify_consistency(first, second, bytes.fromhex(root1), bytes.fromhex(root2), _unhex(proof))


def test_equal_sizes_with_equal_roots_and_empty_proof_is_consistent() -> None:
    root = bytes.fromhex(R8)
    verify_consistency(8, 8, root, root, [])
    assert consistency_proof(LEAVES, 8, 8) == []


@pytest.mark.parametrize(("index", "size"), [(-1, 3), (3, 3), (0, 0)])
def test_inclusion_proof_generation_rejects_bad_arguments(index: int, size: int) -> None:
    with pytest.raises(ProofError):
        inclusion_proof(LEAVES, index, size)


@pytest.mark.parametrize(("first", "second"), [(0, 3), (4, 3), (-1, 2)])
def test_consistency_proof_generation_rejects_bad_arguments(first: int, second: int) -> None:
    with pytest.raises(ProofError):
        consistency_proof(LEAVES, first, second)


# --- leaf sources ------------------------------------------------------------------------------


class _CountingSource:
    """A LeafSource like a database would be: served by ranges, reads recorded."""

    def __init__(self, hashes: list[bytes], short_by: int = 0) -> None:
        self._hashes = hashes
        self._short_by = short_by
        self.reads: list[tuple[int, int]] = []

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]:
        self.reads.append((start, end))
        return self._hashes[start : end - self._short_by]


def test_leaf_source_gives_same_proofs_as_a_list() -> None:
    leaves = _random_leaves(37, seed=1)
    source = _CountingSource(leaves)
    assert inclusion_proof(source, 20, 37) == inclusion_proof(leaves, 20, 37)
    assert consistency_proof(source, 13, 37) == consistency_proof(leaves, 13, 37)
    assert all(end <= 37 for _, end in source.reads)


def test_short_leaf_source_is_an_error_not_a_wrong_proof() -> None:
    source = _CountingSource(_random_leaves(10, seed=2), short_by=1)
    with pytest.raises(ProofError, match="leaf source returned"):
        inclusion_proof(source, 3, 10)


def test_source_without_enough_leaves_is_an_error() -> None:
    with pytest.raises(ProofError, match="leaf source returned"):
        inclusion_proof(_random_leaves(5, seed=3), 1, 9)


# --- stored subtree roots ----------------------------------------------------------------------

# Past 2**16, so subtrees of both stored heights (256 and 65,536 leaves) exist, with a ragged end.
BIG_SIZE = (1 << 16) + (1 << 9) + 37
BIG_LOG = _random_leaves(BIG_SIZE, seed=99)


def _reported_subtrees(leaves: Sequence[bytes]) -> list[Subtree]:
    compact = CompactRange.empty()
    completed: list[Subtree] = []
    for digest in leaves:
        compact.append(digest, completed)
    return completed


BIG_SUBTREES = _reported_subtrees(BIG_LOG)


class _SubtreeSource:
    """A merkle.SubtreeSource like the store: leaves and stored roots by ranges, reads counted."""

    def __init__(self, leaves: list[bytes], subtrees: Sequence[Subtree], size: int) -> None:
        self._leaves = leaves
        self._roots = {(height, idx): root for height, idx, root in subtrees}
        self._size = size
        self.hashes_read = 0

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]:
        assert 0 <= start <= end <= self._size
        self.hashes_read += end - start
        return self._leaves[start:end]

    def subtree_roots(self, height: int, start: int, end: int) -> Sequence[bytes]:
        assert height % SUBTREE_STEP == 0
        assert end << height <= self._size  # only subtrees inside the tree asked for
        found = [self._roots[height, i] for i in range(start, end) if (height, i) in self._roots]
        self.hashes_read += len(found)
        return found


def test_append_reports_exactly_the_stored_height_subtrees_it_completes() -> None:
    expected = []
    for end in range(1, BIG_SIZE + 1):
        for height in (8, 16):
            if end % (1 << height) == 0:
                idx = (end >> height) - 1
                leaves = BIG_LOG[idx << height : (idx + 1) << height]
                expected.append((height, idx, root_from_leaf_hashes(leaves)))
    assert expected == BIG_SUBTREES  # in the order they complete
    assert len(expected) == (BIG_SIZE >> 8) + (BIG_SIZE >> 16)


@given(size=st.integers(1, BIG_SIZE), data=st.data())
@settings(max_examples=60, deadline=None)
def test_proofs_from_stored_subtrees_equal_proofs_from_leaves(
    size: int, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, size - 1), label="index")
    first = data.draw(st.integers(1, size), label="first")
    # The roots of subtrees inside the tree of `size`: the store only has those for that size.
    stored = [s for s in BIG_SUBTREES if (s[1] + 1) << s[0] <= size]
    source = _SubtreeSource(BIG_LOG, stored, size)
    assert inclusion_proof(source, index, size) == inclusion_proof(BIG_LOG[:size], index, size)
    # Each subtree root on the path reads at most 255 hashes per stored level (0, 8, 16).
    assert source.hashes_read <= 17 * 3 * 255
    source.hashes_read = 0
    assert consistency_proof(source, first, size) == consistency_proof(BIG_LOG[:size], first, size)
    assert source.hashes_read <= 2 * 17 * 3 * 255


def test_a_proof_for_a_large_tree_reads_a_few_hundred_hashes_not_every_leaf() -> None:
    source = _SubtreeSource(BIG_LOG, BIG_SUBTREES, BIG_SIZE)
    inclusion_proof(source, 3, BIG_SIZE)
    assert source.hashes_read < 1_000  # against 66,084 from the leaves
    source.hashes_read = 0
    consistency_proof(source, 300, BIG_SIZE)
    assert source.hashes_read < 2_000


def test_a_missing_root_falls_back_to_the_next_stored_height_not_the_leaves() -> None:
    without_top = [s for s in BIG_SUBTREES if s[0] != 16]
    source = _SubtreeSource(BIG_LOG, without_top, BIG_SIZE)
    assert inclusion_proof(source, 3, BIG_SIZE) == inclusion_proof(BIG_LOG, 3, BIG_SIZE)
    assert source.hashes_read < 1_000 + 256  # the 256 roots of height 8 instead of one


def test_prefix_range_refuses_a_range_that_is_not_aligned() -> None:
    source = _SubtreeSource(BIG_LOG, BIG_SUBTREES, BIG_SIZE)
    with pytest.raises(ValueError, match="not aligned"):
        prefix_range(source, 100, 300)
    assert prefix_range(source, 512, 300).size == 300  # 512 is a multiple of 512 >= 300


def test_missing_subtree_roots_fall_back_to_the_leaves() -> None:
    # A log integrated before roots were kept, or one whose roots were lost: same proofs.
    partial = BIG_SUBTREES[::3]
    for subtrees in ([], partial):
        source = _SubtreeSource(BIG_LOG, subtrees, BIG_SIZE)
        assert inclusion_proof(source, 70, BIG_SIZE) == inclusion_proof(BIG_LOG, 70, BIG_SIZE)
        assert consistency_proof(source, 65_537, BIG_SIZE) == consistency_proof(
            BIG_LOG, 65_537, BIG_SIZE
        )


@given(size=st.integers(0, BIG_SIZE))
@settings(max_examples=40, deadline=None)
def test_prefix_range_from_stored_subtrees_equals_the_compact_range(size: int) -> None:
    expected = CompactRange.empty()
    expected.extend(BIG_LOG[:size])
    source = _SubtreeSource(BIG_LOG, BIG_SUBTREES, BIG_SIZE)
    assert prefix_range(source, 0, size) == expected


# --- compact range -----------------------------------------------------------------------------


@given(count=st.integers(0, 300), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_compact_range_root_equals_full_recomputation_at_every_size(count: int, seed: int) -> None:
    leaves = _random_leaves(count, seed)
    compact = CompactRange.empty()
    assert compact.root() == _reference_mth([])
    for size in range(1, count + 1):
        compact.append(leaves[size - 1])
        assert compact.size == size
        assert len(compact.hashes) == size.bit_count()
        assert compact.root() == _reference_mth(leaves[:size])


@given(count=st.integers(0, 300), split=st.integers(0, 300), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_compact_range_lines_round_trip_and_resume(count: int, split: int, seed: int) -> None:
    leaves = _random_leaves(count, seed)
    split = min(split, count)
    prefix = CompactRange.empty()
    prefix.extend(leaves[:split])
    text = prefix.to_lines()
    assert text.count("\n") == split.bit_count()
    restored = CompactRange.from_lines(split, text)
    assert restored == prefix
    # Resuming from the restored range must give the same root as hashing everything.
    restored.extend(leaves[split:])
    assert restored.root() == _reference_mth(leaves)
    # copy() is independent of the original.
    copied = prefix.copy()
    copied.extend(leaves[split:])
    assert prefix.size == split


@pytest.mark.parametrize(
    ("size", "text", "message"),
    [
        (3, "", "has 2 hashes, got 0"),
        (1, "AAAA\n", "is 3 bytes"),
        (1, "not base64!\n", "not base64"),
        (1, "A" * 43 + "=", "does not end with a newline"),
        (0, "\n", "has 0 hashes, got 1"),
    ],
)
def test_compact_range_from_lines_rejects_malformed_text(
    size: int, text: str, message: str
) -> None:
    with pytest.raises(CompactRangeError, match=message):
        CompactRange.from_lines(size, text)


def test_compact_range_rejects_wrong_length_leaf() -> None:
    compact = CompactRange.empty()
    with pytest.raises(CompactRangeError):
        compact.append(b"short")
    with pytest.raises(CompactRangeError):
        compact.extend([LEAVES[0], b"x" * (HASH_SIZE + 1)])
    assert compact.size == 1  # the valid leaf before the bad one was kept, size in step


# --- proofs: property tests --------------------------------------------------------------------


@st.composite
def _log_and_index(draw: st.DrawFn) -> tuple[list[bytes], int]:
    size = draw(st.integers(1, 300))
    index = draw(st.integers(0, size - 1))
    return _random_leaves(size, draw(st.integers(0, 2**16))), index


@st.composite
def _log_and_sizes(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    second = draw(st.integers(1, 300))
    first = draw(st.integers(1, second))
    return _random_leaves(second, draw(st.integers(0, 2**16))), first, second


@given(_log_and_index())
@settings(max_examples=60, deadline=None)
def test_inclusion_proof_verifies_and_every_bit_flip_fails(case: tuple[list[bytes], int]) -> None:
    leaves, index = case
    size = len(leaves)
    root = root_from_leaf_hashes(leaves)
    proof = inclusion_proof(leaves, index, size)
    verify_inclusion(leaves[index], index, size, proof, root)

    for position, element in enumerate(proof):
        for bit in range(HASH_SIZE * 8):
            mutated = list(proof)
            mutated[position] = _flip(element, bit)
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], index, size, mutated, root)
    for bit in range(HASH_SIZE * 8):
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, proof, _flip(root, bit))
        with pytest.raises(ProofError):
            verify_inclusion(_flip(leaves[index], bit), index, size, proof, root)


@given(_log_and_index())
@settings(max_examples=100, deadline=None)
def test_inclusion_proof_fails_for_wrong_index_or_size(case: tuple[list[bytes], int]) -> None:
    leaves, index = case
    size = len(leaves)
    root = root_from_leaf_hashes(leaves)
    proof = inclusion_proof(leaves, index, size)
    for wrong_index in {index - 1, index + 1, size - 1 - index} - {index}:
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], wrong_index, size, proof, root)
    # A wrong size is checked against the genuine root of a tree of that size, so only the
    # proof's shape can be wrong.
    bigger = [*leaves, leaf_hash(b"one more")]
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], index, size + 1, proof, root_from_leaf_hashes(bigger))
    if index < size - 1:
        smaller_root = root_from_leaf_hashes(leaves[:-1])
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size - 1, proof, smaller_root)
    # Dropping or adding an element always fails.
    if proof:
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, proof[:-1], root)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], index, size, [*proof, root], root)


@given(_log_and_sizes())
@settings(max_examples=60, deadline=None)
def test_consistency_proof_verifies_and_every_bit_flip_fails(
    case: tuple[list[bytes], int, int],
) -> None:
    leaves, first, second = case
    first_root = root_from_leaf_hashes(leaves[:first])
    second_root = root_from_leaf_hashes(leaves)
    proof = consistency_proof(leaves, first, second)
    verify_consistency(first, second, first_root, second_root, proof)

    for position, element in enumerate(proof):
        for bit in range(HASH_SIZE * 8):
            mutated = list(proof)
            mutated[position] = _flip(element, bit)
            with pytest.raises(ProofError):
                verify_consistency(first, second, first_root, second_root, mutated)
    for bit in range(HASH_SIZE * 8):
        with pytest.raises(ProofError):
            verify_consistency(first, second, _flip(first_root, bit), second_root, proof)
        with pytest.raises(ProofError):
            verify_consistency(first, second, first_root, _flip(second_root, bit), proof)


@given(_log_and_sizes())
@settings(max_examples=100, deadline=None)
def test_consistency_proof_fails_for_wrong_sizes(case: tuple[list[bytes], int, int]) -> None:
    leaves, first, second = case
    roots = {size: root_from_leaf_hashes(leaves[:size]) for size in range(1, second + 1)}
    proof = consistency_proof(leaves, first, second)
    for wrong_first in {first - 1, first + 1} - {first}:
        if 1 <= wrong_first <= second:
            with pytest.raises(ProofError):
                verify_consistency(wrong_first, second, roots[wrong_first], roots[second], proof)
    if second - 1 >= first:
        with pytest.raises(ProofError):
            verify_consistency(first, second - 1, roots[first], roots[second - 1], proof)
