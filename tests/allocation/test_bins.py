import collections

import numpy as np
import pytest

from ttc.allocation import bins


@pytest.mark.parametrize("n", [5, 7, 23, 300, 301])
def test_quantile_bins_have_equal_counts_within_one_even_with_ties(n):
  rng = np.random.default_rng(n)
  # Coarse values (pass@1 of 4 samples): most questions tie with many others.
  values = {f"q{i}": float(rng.integers(0, 5)) / 4 for i in range(n)}
  got = bins.quantile_bins(values)
  counts = collections.Counter(got.values())
  assert set(counts) == {1, 2, 3, 4, 5}
  assert max(counts.values()) - min(counts.values()) <= 1
  # Bin 1 is the easiest: no question of a harder bin has a higher value.
  for uid, b in got.items():
    for other, c in got.items():
      if c > b:
        assert values[other] <= values[uid]


def test_quantile_bins_are_reproducible_and_ignore_listing_order():
  values = {f"q{i}": float(i % 3) for i in range(50)}
  shuffled = dict(reversed(list(values.items())))
  assert bins.quantile_bins(values) == bins.quantile_bins(shuffled)


def test_too_few_questions_for_the_bins_is_an_error():
  with pytest.raises(ValueError, match="cannot fill 5 bins"):
    bins.quantile_bins({"a": 1.0, "b": 0.0})


def test_halves_split_every_bin_evenly():
  got = bins.quantile_bins({f"q{i}": float(i) for i in range(41)})
  halves = bins.halves(got, seed=3)
  for b in range(1, 6):
    members = [halves[u] for u, k in got.items() if k == b]
    assert abs(sum(members) - len(members) / 2) <= 0.5
  assert bins.halves(got, seed=3) == halves and bins.halves(got, seed=4) != halves
