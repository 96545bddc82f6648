"""The efficiency ratio (paper Fig. 1 / §5.3): how much less compute a strategy needs
to reach the accuracy best-of-N reaches at budget B.

For each budget B of the baseline with accuracy a(B), the matching budget b* is the
smallest budget at which the other curve reaches a(B), reading that curve as
piecewise linear in log2(budget) between its measured budgets; the ratio is B / b*.
Nothing is extrapolated, so two cases are bounds rather than values:

  * the curve already reaches a(B) at its smallest budget b0: ratio >= B / b0;
  * it never reaches a(B): ratio <= B / (its largest budget), and the bound is
    recorded (it may be < 1).

The summary is the geometric mean of the per-budget ratios (bounds taken at their
value), so a 2x and an 8x give 4x, and its interval comes from resampling questions
and redoing the whole comparison (`ttc.allocation.report`).
"""

import dataclasses
import math
from typing import Sequence

import numpy as np

AT_LEAST, EXACT, AT_MOST = ">=", "=", "<="


@dataclasses.dataclass(frozen=True)
class Ratio:
  """B / b* at one baseline budget; `kind` says whether it is a value or a bound."""
  budget: int
  ratio: float
  kind: str  # EXACT, AT_LEAST (reached at the smallest budget), AT_MOST (never reached)


def matching_budget(budgets: Sequence[int], accuracy: Sequence[float],
                    target: float) -> tuple[float, str]:
  """(b*, kind): the smallest budget where `accuracy` (one value per budget, increasing
  budgets) reaches `target`, interpolated linearly in log2(budget); EXACT, AT_LEAST
  (the smallest budget, already there: b* <= it) or AT_MOST (never: b* > the largest,
  the largest returned)."""
  logs = np.log2(np.asarray(budgets, np.float64))
  acc = np.asarray(accuracy, np.float64)
  if acc[0] >= target:
    return float(budgets[0]), AT_LEAST
  for j in range(len(acc) - 1):
    if acc[j + 1] >= target:
      t = (target - acc[j]) / (acc[j + 1] - acc[j])  # acc[j] < target <= acc[j + 1]
      return float(2 ** (logs[j] + t * (logs[j + 1] - logs[j]))), EXACT
  return float(budgets[-1]), AT_MOST


def ratios(budgets: Sequence[int], baseline: Sequence[float],
           other: Sequence[float]) -> list[Ratio]:
  """A Ratio per budget where the baseline has a value (not NaN); `other` is measured at
  the same budgets (NaN budgets of `other` are skipped). A baseline budget past the
  other curve's largest gets none: "never reached by B_max < B" would read as a saving
  where the other curve simply was not run."""
  keep = [i for i, a in enumerate(other) if not math.isnan(a)]
  other_budgets = [budgets[i] for i in keep]
  other_acc = [other[i] for i in keep]
  out = []
  for budget, target in zip(budgets, baseline):
    if math.isnan(target) or not other_budgets or budget > other_budgets[-1]:
      continue
    b_star, kind = matching_budget(other_budgets, other_acc, target)
    out.append(Ratio(budget, budget / b_star, kind))
  return out


def geometric_mean(values: Sequence[Ratio]) -> float:
  """The summary: exp(mean(log ratio)), bounds at their value; NaN if there are none."""
  if not values:
    return float("nan")
  return float(np.exp(np.mean([np.log(r.ratio) for r in values])))


def format_ratio(r: Ratio) -> str:
  """'4.00x', '>=16.00x' or '<=0.50x'."""
  return f"{'' if r.kind == EXACT else r.kind}{r.ratio:.2f}x"
