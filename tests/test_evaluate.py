import itertools

import pytest

from ttc.evaluate import pass_at_k


@pytest.mark.parametrize("n, c, k", [(16, 0, 1), (16, 3, 1), (16, 3, 16), (8, 2, 4), (5, 5, 2)])
def test_pass_at_k_equals_brute_force_over_subsets(n, c, k):
  outcomes = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
  assert pass_at_k(n, c, k) == pytest.approx(brute)


def test_pass_at_k_needs_k_samples():
  with pytest.raises(ValueError):
    pass_at_k(4, 1, 16)
