"""Confidence intervals for accuracies over problems (the tables of issues 4 and 5)."""

import math

import numpy as np


def bootstrap_interval(values, level: float = 0.95, num_resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float, float]:
  """(mean, low, high): a percentile bootstrap interval of the mean over problems.

  values: one number per problem (1/0 correctness, or a fraction). Problems are
  resampled with replacement `num_resamples` times; the interval holds the central
  `level` of the resampled means. Seeded, so tables reproduce exactly.
  """
  x = np.asarray(values, np.float64).ravel()
  if x.size == 0:
    raise ValueError("bootstrap_interval needs at least one value")
  if not np.all(np.isfinite(x)):
    raise ValueError("bootstrap_interval got NaN or inf values")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, (num_resamples, x.size))].mean(axis=1)
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(means, [tail, 100 - tail])
  return float(x.mean()), float(low), float(high)


def format_interval(mean: float, low: float, high: float) -> str:
  """'0.512 [0.455, 0.570]'."""
  return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
  if num_samples < k:
    raise ValueError(f"pass@{k} needs at least {k} samples, got {num_samples}")
  if num_samples - num_correct < k:
    return 1.0
  return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)
