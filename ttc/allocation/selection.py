"""Compute-optimal selection (paper §3.2): per difficulty bin and budget, the best
configuration, chosen on one half of the questions and measured on the other.

A configuration is one row of a sweep's results (`ttc.search.results`): a method
with its settings in its name (`beam_m4`, `lookahead_k1`, `revise_c4_l4_hier`, the
`majority` pseudo-method) at the generation budget it used. At budget B the
candidates are the configurations of cost B, as in the paper; with `cheaper=True`
every configuration of cost <= B. Spending less is legitimate, but with few questions
per bin more candidates mean a luckier winner on the choosing half (on the study's
100 questions it cost accuracy), so it is an option.

The same winner's curse hits the paper's rule: with ten questions per bin and half,
some configuration beats best-of-N on the choosing half by chance. `margin` guards
against it: the `default` configuration (best-of-N) stays unless another beats it on
the choosing half by more than `margin` (accuracy, e.g. 0.1 = one question in ten).
margin 0 is the paper's rule.

2-fold: the questions split into two halves balanced within each bin
(`bins.halves`). For evaluation half e, each bin's configuration is the one with the
highest accuracy on that bin's questions of half 1 - e (ties: the cheaper, then the
first by name); every question of half e is scored by it. Each question is thus
scored exactly once, by a choice its own correctness did not influence, and the
curve is the mean over all questions. Bootstrap intervals redo the whole selection
on each resample of questions, so they include the noise of choosing.
"""

import dataclasses
from typing import Collection, Mapping, Optional, Sequence

import numpy as np

from ttc.search import results

Config = tuple[str, int]  # (method, budget in generations)


@dataclasses.dataclass(frozen=True)
class Table:
  """Per-question accuracy of every configuration over one set of questions.

  configs: [C] (method, budget), sorted by (budget, method): the tie-break order.
  uids: [Q] question ids; bins_Q / halves_Q: int arrays [Q] (bin 1..K, half 0 or 1).
  correct_CxQ: float64 [C, Q], a question's correctness averaged over seeds.
  """
  configs: tuple[Config, ...]
  uids: tuple[str, ...]
  bins_Q: np.ndarray
  halves_Q: np.ndarray
  correct_CxQ: np.ndarray

  def rows(self, method: str) -> dict[int, int]:
    """{budget: row index} of one method's configurations."""
    return {b: c for c, (m, b) in enumerate(self.configs) if m == method}


def build_table(records: Sequence[dict], bins: Mapping[str, int], halves: Mapping[str, int],
                uids: Optional[Sequence[str]] = None) -> tuple[Table, list[Config]]:
  """The Table of `records` (results-schema dicts, every method including the `majority`
  pseudo-method of best_of_n's lines), and the configurations left out because they
  miss some of its questions.

  uids: the questions (None = every question of `records` in `bins`). A configuration
  that did not run all of them (a sweep still running) is left out rather than
  compared on fewer.
  """
  cells, _ = results.per_problem(records)
  if uids is None:
    uids = {u for per_uid in cells.values() for u in per_uid}
  uids = sorted(u for u in uids if u in bins)
  kept, dropped = [], []
  for config in sorted(cells, key=lambda c: (c[1], c[0])):
    (kept if all(u in cells[config] for u in uids) else dropped).append(config)
  correct = np.array([[np.mean(cells[c][u]) for u in uids] for c in kept], np.float64)
  table = Table(tuple(kept), tuple(uids), np.array([bins[u] for u in uids], np.int64),
                np.array([halves[u] for u in uids], np.int64),
                correct.reshape(len(kept), len(uids)))
  return table, dropped


@dataclasses.dataclass(frozen=True)
class Selection:
  """The compute-optimal choice at each budget.

  value_BxQ: float64 [budgets, Q]: each question's accuracy under the configuration
    chosen for its bin on the other half.
  choice_BxHxK: int [budgets, 2, K] row of `Table.configs` used for evaluation half h
    (chosen on half 1 - h) and bin k + 1; -1 where no configuration fits the budget
    or no question of the table is in the bin.
  """
  budgets: tuple[int, ...]
  value_BxQ: np.ndarray
  choice_BxHxK: np.ndarray


def two_fold(table: Table, budgets: Sequence[int], candidates: Optional[Collection[str]] = None,
             weights_Q: Optional[np.ndarray] = None, num_bins: Optional[int] = None,
             cheaper: bool = False, default: Optional[str] = None,
             margin: float = 0.0) -> Selection:
  """Compute-optimal selection at each budget (module docstring).

  candidates: the methods it may choose (None = every configuration of the table).
  cheaper: also configurations that cost less than the budget.
  default / margin: the method kept at a budget unless another configuration is more
    than `margin` more accurate on the choosing half (None or 0 = the best one wins).
  weights_Q: [Q] how often each question counts (bootstrap resample counts; None = 1).
    A bin whose choosing half has no weight falls back to that whole half.
  """
  w = np.ones(len(table.uids)) if weights_Q is None else np.asarray(weights_Q, np.float64)
  num_bins = num_bins or int(table.bins_Q.max())
  allowed = np.array([candidates is None or m in candidates for m, _ in table.configs], bool)
  costs = np.array([b if ok else np.inf for (_, b), ok in zip(table.configs, allowed)])
  value = np.full((len(budgets), len(table.uids)), np.nan)
  choice = np.full((len(budgets), 2, num_bins), -1, np.int64)
  for i, budget in enumerate(budgets):
    # In (budget, method) order, so argmax prefers the cheaper of equals.
    rows = np.flatnonzero(costs <= budget if cheaper else costs == budget)
    if not rows.size:
      continue
    kept = table.rows(default).get(budget, -1) if default and margin > 0 else -1
    kept_at = int(np.flatnonzero(rows == kept)[0]) if kept in rows else -1
    for half in (0, 1):
      choosing = table.halves_Q == 1 - half
      for k in range(1, num_bins + 1):
        in_bin = table.bins_Q == k
        if not in_bin.any():
          continue  # a bin none of these questions fell in (a subset of the split)
        weight = w * (choosing & in_bin)
        if weight.sum() == 0:
          weight = w * choosing
        accuracy = table.correct_CxQ[rows] @ weight / max(weight.sum(), 1e-300)
        best = rows[int(np.argmax(accuracy))]
        if kept_at >= 0 and accuracy.max() <= accuracy[kept_at] + margin + 1e-9:
          best = kept
        choice[i, half, k - 1] = best
        scored = (table.halves_Q == half) & in_bin
        value[i, scored] = table.correct_CxQ[best, scored]
  return Selection(tuple(budgets), value, choice)


def fixed_curve(table: Table, method: str, budgets: Sequence[int]) -> np.ndarray:
  """[budgets, Q] a single method's accuracy at each budget (NaN rows where it did not
  run that budget): the best-of-N and majority baselines."""
  rows = table.rows(method)
  return np.stack([table.correct_CxQ[rows[b]] if b in rows else
                   np.full(len(table.uids), np.nan) for b in budgets])


def weighted_mean(value_BxQ: np.ndarray, weights_Q: Optional[np.ndarray] = None,
                  mask_Q: Optional[np.ndarray] = None) -> np.ndarray:
  """[budgets] mean over questions (of `mask_Q`, weighted); NaN where a row is NaN."""
  w = np.ones(value_BxQ.shape[1]) if weights_Q is None else np.asarray(weights_Q, np.float64)
  if mask_Q is not None:
    w = w * mask_Q
  return value_BxQ @ w / max(w.sum(), 1e-300)
