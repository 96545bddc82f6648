"""Beyond the paper (its §8 future work): allocation without knowing difficulty ahead.

On-line allocation. The paper's predicted bins need the mean verifier score of many
samples per question (2048), spent before any strategy runs and not counted. Here a
question first draws `probe` samples, the mean of their final verifier scores places
it in a bin (thresholds: the quantiles of the same statistic on the choosing half),
and the rest of its budget, B - probe generations, goes to the configuration that
bin prefers at that cost. The probe is charged to the budget and not reused for the
answer, so the comparison with `selection.two_fold` at budget B is conservative.

One global budget. Instead of the same budget for every question, T = B x Q
generations are shared: each bin gets the budget where its estimated marginal gain
per generation is highest (greedy upgrades along each bin's accuracy-vs-budget
curve measured on the choosing half), subject to the total. Equal total compute to
a per-question budget B.

Both are 2-fold like `selection.two_fold`: everything chosen on one half, every
question of the other half scored by it, and then the halves swap.
"""

from typing import Collection, Optional, Sequence

import numpy as np

from ttc.allocation import selection


def _probe_bins(stat_Q: np.ndarray, reference: np.ndarray, num_bins: int) -> np.ndarray:
  """[Q] bins 1..num_bins (1 = highest statistic, the easiest) by the quantiles of the
  statistic over the `reference` questions."""
  edges = np.quantile(stat_Q[reference], np.linspace(0, 1, num_bins + 1)[1:-1])
  return num_bins - np.searchsorted(edges, stat_Q, side="right")


def probe_statistic(final_scores: Sequence[Sequence[float]], probe: int) -> np.ndarray:
  """[Q] the mean final verifier score of each question's first `probe` samples."""
  short = [i for i, s in enumerate(final_scores) if len(s) < probe]
  if short:
    raise ValueError(f"a probe of {probe} needs {probe} samples per question; question "
                     f"{short[0]} has {len(final_scores[short[0]])}")
  return np.array([np.mean(s[:probe]) for s in final_scores], np.float64)


def online(table: selection.Table, budgets: Sequence[int], probe_stat_Q: np.ndarray,
           probe: int, candidates: Optional[Collection[str]] = None,
           weights_Q: Optional[np.ndarray] = None, num_bins: int = 5) -> selection.Selection:
  """On-line allocation at each total budget B (module docstring): bins from the probe
  statistic [Q], configurations of cost <= B - probe. Selection.value_BxQ is NaN at a
  budget where nothing fits after the probe."""
  w = np.ones(len(table.uids)) if weights_Q is None else np.asarray(weights_Q, np.float64)
  value = np.full((len(budgets), len(table.uids)), np.nan)
  choice = np.full((len(budgets), 2, num_bins), -1, np.int64)
  costs = np.array([b if candidates is None or m in candidates else np.inf
                    for m, b in table.configs], np.float64)
  for half in (0, 1):
    choosing = table.halves_Q == 1 - half
    bins_Q = _probe_bins(probe_stat_Q, choosing, num_bins)
    for i, budget in enumerate(budgets):
      rows = np.flatnonzero(costs <= budget - probe)  # the probe is paid first
      if not rows.size:
        continue
      for k in range(1, num_bins + 1):
        weight = w * (choosing & (bins_Q == k))
        if weight.sum() == 0:
          weight = w * choosing
        best = rows[int(np.argmax(table.correct_CxQ[rows] @ weight))]
        choice[i, half, k - 1] = best
        scored = (table.halves_Q == half) & (bins_Q == k)
        value[i, scored] = table.correct_CxQ[best, scored]
  return selection.Selection(tuple(budgets), value, choice)


def _bin_curves(table, rows, weight, bins_Q, num_bins):
  """[K, C'] choosing-half accuracy of each candidate row per bin."""
  out = np.zeros((num_bins, len(rows)))
  for k in range(1, num_bins + 1):
    wk = weight * (bins_Q == k)
    out[k - 1] = table.correct_CxQ[rows] @ wk / max(wk.sum(), 1e-300)
  return out


def global_budget(table: selection.Table, budgets: Sequence[int],
                  candidates: Optional[Collection[str]] = None,
                  weights_Q: Optional[np.ndarray] = None,
                  num_bins: int = 5) -> tuple[selection.Selection, np.ndarray]:
  """One budget of B x Q generations over all questions, at each B of `budgets`.

  Per bin, the configurations on the bin's upper accuracy-vs-cost frontier (measured
  on the choosing half) are the steps a bin can take; bins start at their cheapest
  configuration and the step with the largest gain per extra generation is taken
  while the total (cost x questions of the bin, on the evaluation half) fits.
  Returns the Selection and [budgets, 2, K] the cost each bin got (0 where none).
  """
  w = np.ones(len(table.uids)) if weights_Q is None else np.asarray(weights_Q, np.float64)
  costs = np.array([b if candidates is None or m in candidates else np.inf
                    for m, b in table.configs], np.float64)
  rows = np.flatnonzero(np.isfinite(costs))
  value = np.full((len(budgets), len(table.uids)), np.nan)
  choice = np.full((len(budgets), 2, num_bins), -1, np.int64)
  spent = np.zeros((len(budgets), 2, num_bins))
  for half in (0, 1):
    choosing = table.halves_Q == 1 - half
    evaluated = table.halves_Q == half
    acc_KxC = _bin_curves(table, rows, w * choosing, table.bins_Q, num_bins)
    count_K = np.array([(w * evaluated * (table.bins_Q == k)).sum()
                        for k in range(1, num_bins + 1)])
    frontiers = [_frontier(costs[rows], acc_KxC[k]) for k in range(num_bins)]
    for i, budget in enumerate(budgets):
      level = [0] * num_bins  # position on each bin's frontier
      total = sum(costs[rows][f[0]] * n for f, n in zip(frontiers, count_K))
      if total > budget * count_K.sum():
        continue  # even the cheapest configuration everywhere does not fit
      while True:
        best, best_gain = None, 0.0
        for k, f in enumerate(frontiers):
          if level[k] + 1 < len(f) and count_K[k] > 0:
            a, b = f[level[k]], f[level[k] + 1]
            extra = (costs[rows][b] - costs[rows][a]) * count_K[k]
            gain = (acc_KxC[k, b] - acc_KxC[k, a]) * count_K[k] / extra
            if total + extra <= budget * count_K.sum() and gain > best_gain:
              best, best_gain = k, gain
        if best is None:
          break
        f = frontiers[best]
        total += (costs[rows][f[level[best] + 1]] - costs[rows][f[level[best]]]) * count_K[best]
        level[best] += 1
      for k, f in enumerate(frontiers):
        row = rows[f[level[k]]]
        choice[i, half, k] = row
        spent[i, half, k] = costs[row]
        scored = evaluated & (table.bins_Q == k + 1)
        value[i, scored] = table.correct_CxQ[row, scored]
  return selection.Selection(tuple(budgets), value, choice), spent


def _frontier(cost_C: np.ndarray, acc_C: np.ndarray) -> list[int]:
  """Indices of the upper concave frontier of (cost, accuracy), cheapest first: the
  configurations worth buying in order, each more accurate per extra generation than
  any cheaper alternative."""
  order = sorted(range(len(cost_C)), key=lambda c: (cost_C[c], -acc_C[c]))
  points: list[int] = []
  for c in order:
    if points and acc_C[c] <= acc_C[points[-1]]:
      continue  # no better than something cheaper
    while len(points) >= 2:
      a, b = points[-2], points[-1]
      # b lies under the chord a -> c: buying c straight from a is a better rate.
      if (acc_C[b] - acc_C[a]) * (cost_C[c] - cost_C[a]) <= (
          (acc_C[c] - acc_C[a]) * (cost_C[b] - cost_C[a])):
        points.pop()
      else:
        break
    points.append(c)
  return points
