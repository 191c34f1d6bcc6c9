"""Parameter lists padded to a power of two (service.persistence.padded): fewer statement sizes,
the same meaning for IN lists, OR-ed keys and re-entrant locks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.persistence import padded


@given(st.lists(st.integers(), min_size=1, max_size=200))
def test_padding_keeps_the_values_and_their_order_and_adds_only_the_last(values: list[int]) -> None:
    out = padded(values)
    size = len(out)
    assert size & (size - 1) == 0  # a power of two
    assert len(values) <= size < 2 * len(values) or size == 1
    assert out[: len(values)] == values
    assert set(out[len(values) :]) <= {values[-1]}


def test_at_most_seven_sizes_up_to_a_batch_of_64() -> None:
    assert {len(padded(list(range(n)))) for n in range(1, 65)} == {1, 2, 4, 8, 16, 32, 64}


def test_nothing_to_pad_is_an_error() -> None:
    with pytest.raises(ValueError, match="nothing"):
        padded([])
