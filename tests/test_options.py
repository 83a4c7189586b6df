"""`bundle.options.number_range`, the [min, max] check that simulated coils, SNR, readout
oversampling and the PET phantom ranges share: hand-picked accepted and refused values."""

from __future__ import annotations

import math

import pytest

from bundle.errors import InputError
from bundle.options import number_range


def test_number_range_accepts_ordered_pairs_within_the_bounds_and_single_numbers_when_asked():
    assert number_range("snr", [10, 80], 0.0) == (10.0, 80.0)
    assert number_range("coils", 8, 1) == (8.0, 8.0)
    assert number_range("count_range", (0.04, 0.3), 1e-4, 10.0, scalar=False) == (0.04, 0.3)
    assert number_range("x", [2.0, 2.0], 2.0, 2.0) == (2.0, 2.0)


@pytest.mark.parametrize("value, low, high, scalar", [
    ([80, 10], 0.0, math.inf, True),       # reversed
    ([0.5, 2], 1.0, math.inf, True),       # below the lower bound
    ([0.1, 2.0], 0.0, 1.0, False),         # above the upper bound
    (0.1, 0.0, 1.0, False),                # a single number where a pair is needed
    ([1, 2, 3], 0.0, math.inf, True),      # not a pair
    ("x", 0.0, math.inf, True),            # not numbers
    ([1, float("nan")], 0.0, math.inf, True),
    (True, 0.0, math.inf, True),           # a boolean is not a number
])
def test_number_range_refuses_with_one_line_naming_the_option(value, low, high, scalar):
    with pytest.raises(InputError, match="^opt must be"):
        number_range("opt", value, low, high, scalar)
