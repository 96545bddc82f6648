"""Bootstrap intervals: width matches the binomial standard error; degenerate cases."""

import numpy as np
import pytest

from ttc import stats


def test_interval_of_a_fair_coin_matches_the_normal_approximation():
  values = np.random.default_rng(1).integers(0, 2, 400)
  mean, low, high = stats.bootstrap_interval(values)
  half_width = 1.96 * np.sqrt(mean * (1 - mean) / values.size)  # ~0.049
  assert low < mean < high
  assert abs((high - low) / 2 - half_width) < 0.15 * half_width


def test_constant_values_give_a_zero_width_interval_and_results_reproduce():
  assert stats.bootstrap_interval([1, 1, 1]) == (1.0, 1.0, 1.0)
  values = [0, 1, 1, 0, 1]
  assert stats.bootstrap_interval(values, seed=3) == stats.bootstrap_interval(values, seed=3)
  assert stats.format_interval(0.5, 0.25, 0.75) == "0.500 [0.250, 0.750]"


@pytest.mark.parametrize("bad, message", [([], "at least one"), ([0.5, np.nan], "NaN")])
def test_bad_values_are_rejected(bad, message):
  with pytest.raises(ValueError, match=message):
    stats.bootstrap_interval(bad)
