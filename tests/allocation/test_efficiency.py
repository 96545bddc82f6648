import math

import numpy as np
import pytest

from ttc.allocation import efficiency, flops


def test_matching_budget_interpolates_in_log_budget():
  b, kind = efficiency.matching_budget([4, 16, 64], [0.5, 0.6, 0.7], 0.65)
  assert kind == efficiency.EXACT and b == pytest.approx(32.0)
  assert efficiency.matching_budget([4, 16, 64], [0.5, 0.6, 0.7], 0.45) == (
      4.0, efficiency.AT_LEAST)
  assert efficiency.matching_budget([4, 16, 64], [0.5, 0.6, 0.7], 0.9) == (
      64.0, efficiency.AT_MOST)
  # A curve that dips is read from the left: the first budget that reaches the target.
  b, _ = efficiency.matching_budget([4, 16, 64], [0.5, 0.8, 0.6], 0.65)
  assert b == pytest.approx(2 ** (2 + 0.5 * 2))


def test_ratios_and_their_geometric_mean():
  got = efficiency.ratios([4, 16, 64], [0.4, 0.5, 0.65], [0.5, 0.6, 0.7])
  assert [(r.budget, r.kind) for r in got] == [(4, ">="), (16, ">="), (64, "=")]
  assert [r.ratio for r in got] == pytest.approx([1.0, 4.0, 2.0])
  assert efficiency.geometric_mean(got) == pytest.approx(2.0)
  assert [efficiency.format_ratio(r) for r in got] == [">=1.00x", ">=4.00x", "2.00x"]
  # A baseline budget without a value (NaN) gives no ratio; none at all gives NaN.
  assert len(efficiency.ratios([4, 16], [float("nan"), 0.5], [0.5, 0.6])) == 1
  # Past the other curve's last measured budget there is no ratio (not a "<= 4x").
  got = efficiency.ratios([4, 16, 64], [0.5, 0.6, 0.9], [0.5, 0.7, float("nan")])
  assert [r.budget for r in got] == [4, 16]
  assert math.isnan(efficiency.geometric_mean([]))


def test_never_reaching_the_baseline_is_an_upper_bound_below_one():
  [r] = efficiency.ratios([64], [0.9], [0.7])
  assert r.kind == efficiency.AT_MOST and r.ratio == 1.0
  got = efficiency.ratios([4, 16], [0.2, 0.9], [0.5, 0.7])
  assert got[1].kind == "<=" and got[1].ratio == pytest.approx(16 / 16)


@pytest.mark.parametrize("m", [2.0, 8.0, 14.0])
@pytest.mark.parametrize("r", flops.PAPER_RATIOS)
def test_flops_multiplier_equals_the_total_flops_balance(m, r):
  rng = np.random.default_rng(0)
  params, d_pretrain = float(rng.uniform(1e8, 1e9)), float(rng.uniform(1e11, 1e12))
  d_inference = r * d_pretrain
  large = (flops.pretraining_flops(m * params, d_pretrain)
           + flops.inference_flops(m * params, d_inference))
  x = flops.matched_multiplier(m, r)
  small = (flops.pretraining_flops(params, d_pretrain)
           + flops.inference_flops(params, x * d_inference))
  assert small == pytest.approx(large, rel=1e-12)
  assert x == pytest.approx(m + 3 * (m - 1) / r)


def test_flops_multiplier_rejects_meaningless_inputs():
  with pytest.raises(ValueError):
    flops.matched_multiplier(0.5, 1.0)
  with pytest.raises(ValueError):
    flops.matched_multiplier(2.0, 0.0)


def test_accuracy_at_a_matched_budget():
  assert flops.accuracy_at([4, 16, 64], [0.5, 0.6, 0.7], 8.0) == (pytest.approx(0.55), "=")
  assert flops.accuracy_at([4, 16, 64], [0.5, 0.6, 0.7], 100.0) == (0.7, ">")
  value, kind = flops.accuracy_at([4, 16, 64], [0.5, 0.6, 0.7], 2.0)
  assert kind == "<" and math.isnan(value)
