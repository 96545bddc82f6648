"""How good is a verifier, and how good is the answer it picks (PRM vs ORM evaluation).

Where a task has a ground-truth step checker (the embedded arithmetic task does),
a verifier can be judged step by step as well as by the answers it selects:

  * `auroc` (+ `first_error_steps`): do correct steps score above the first wrong
    step? Steps after the first error are dropped: their label is decided by the
    earlier error, and a PRM is not asked to re-detect it.
  * `sibling_counts` / `sibling_auroc`: the same question asked only among the
    candidate next steps of one prefix, which is all beam search ever compares
    (issue 18): a PRM can separate good from bad steps globally (by depth, by
    question) and still rank siblings no better than chance.
  * `first_error_f1` (+ `best_threshold`): ProcessBench-style (Zheng et al. 2024)
    first-error identification at a score threshold.
  * `subset_accuracy`: accuracy of best-of-n selection, averaged over disjoint
    groups of n of a question's K samples (one curve point per n).
  * `accuracy_table` / `format_accuracy_table`: bootstrap intervals over questions,
    one row per method, one column per n.

Everything here runs on the host (numpy) except the selection inside
`subset_accuracy`, which reuses the jitted `aggregation.choose_answer`.
"""

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc import stats
from ttc.verifiers import aggregation

# ---------------------------------------------------------------------------
# Step-level AUROC.


def _average_ranks(x_N: np.ndarray) -> np.ndarray:
  """[N] float64 1-based ranks of x_N; tied values share the mean of their ranks."""
  _, inverse, counts = np.unique(x_N, return_inverse=True, return_counts=True)
  last_rank = np.cumsum(counts)  # rank of the last member of each tie group
  return (last_rank - (counts - 1) / 2)[inverse.ravel()]


def auroc(scores, labels) -> float:
  """Area under the ROC curve of scores [N] for boolean labels [N].

  Equals P(score of a random positive > score of a random negative), ties counted
  1/2 (the Mann-Whitney U statistic over positives, normalised). O(N log N).
  Raises ValueError on different lengths, non-finite scores, or an empty class.
  """
  x = np.asarray(scores, np.float64).ravel()
  y = np.asarray(labels).ravel()
  if x.shape != y.shape:
    raise ValueError(f"auroc: {x.size} scores but {y.size} labels; pass one label per score")
  if not np.all(np.isfinite(x)):
    raise ValueError("auroc: scores contain NaN or inf; check the verifier outputs")
  y = y.astype(bool)
  num_pos, num_neg = int(y.sum()), int((~y).sum())
  if num_pos == 0 or num_neg == 0:
    raise ValueError(f"auroc needs both classes; got {num_pos} positives and {num_neg} "
                     "negatives")
  # U = (sum of positive ranks) - (their minimum possible sum).
  u = _average_ranks(x)[y].sum() - num_pos * (num_pos + 1) / 2
  return float(u / (num_pos * num_neg))


def _check_ragged(step_scores: Sequence[Sequence[float]],
                  true_labels: Sequence[Sequence[bool]]) -> None:
  """Raises ValueError unless both are lists of per-solution lists of equal lengths."""
  if len(step_scores) != len(true_labels):
    raise ValueError(f"{len(step_scores)} solutions of scores but {len(true_labels)} of "
                     "labels; pass one label list per solution")
  for i, (s, t) in enumerate(zip(step_scores, true_labels)):
    if len(s) != len(t):
      raise ValueError(f"solution {i} has {len(s)} step scores but {len(t)} step labels")


def _first_false(labels: Sequence[bool]) -> Optional[int]:
  """Index of the first False in labels, or None if all are True."""
  for i, ok in enumerate(labels):
    if not ok:
      return i
  return None


def first_error_steps(step_scores: Sequence[Sequence[float]],
                      true_labels: Sequence[Sequence[bool]]) -> tuple[np.ndarray, np.ndarray]:
  """(scores [M] float64, is_correct_step [M] bool) over solutions' steps up to the first error.

  Per solution: its steps before the first wrong step (positives) and that wrong
  step (a negative); later steps are dropped. M = total steps kept. For
  `auroc(*first_error_steps(...))`: correct steps vs the first wrong step.
  """
  _check_ragged(step_scores, true_labels)
  scores, correct = [], []
  for s, t in zip(step_scores, true_labels):
    first = _first_false(t)
    keep = len(t) if first is None else first + 1
    scores.extend(float(v) for v in s[:keep])
    correct.extend(bool(v) for v in t[:keep])
  return np.asarray(scores, np.float64), np.asarray(correct, bool)


# ---------------------------------------------------------------------------
# Within-sibling AUROC: the ranking beam search uses.


@dataclasses.dataclass(frozen=True)
class SiblingCounts:
  """One question's (correct, incorrect) sibling pairs; see `sibling_counts`."""

  wins: float  # pairs where the correct sibling scores higher, ties counted 1/2
  pairs: int  # (correct, incorrect) pairs of siblings of the same parent
  parents: int  # parents with at least one correct and one incorrect candidate


def _distinct_candidates(step_texts, step_scores, true_labels) -> dict:
  """{parent: {step text: (scores, label)}} over steps whose earlier steps are all correct.

  A parent is the tuple of a solution's preceding step texts. Repeats of a step under
  one parent are one candidate; their scores (equal up to numerics, as the verifier
  read the same tokens) are kept to be averaged.
  """
  _check_ragged(step_scores, true_labels)
  if len(step_texts) != len(step_scores):
    raise ValueError(f"{len(step_texts)} solutions of step texts but {len(step_scores)} of "
                     "scores; pass one text list per solution")
  parents: dict = {}
  for i, (texts, scores, labels) in enumerate(zip(step_texts, step_scores, true_labels)):
    if len(texts) != len(scores):
      raise ValueError(f"solution {i} has {len(texts)} step texts but {len(scores)} scores")
    first = _first_false(labels)
    # Up to the first error, like `first_error_steps`: after it, "correct" means little.
    for t in range(len(texts) if first is None else first + 1):
      siblings = parents.setdefault(tuple(texts[:t]), {})
      seen, label = siblings.setdefault(texts[t], ([], bool(labels[t])))
      if label != bool(labels[t]):
        raise ValueError(f"step {t} of solution {i} ({texts[t]!r}) has label {labels[t]} "
                         f"but an identical step after the same prefix has {label}; the "
                         "step checker must label a step by its prefix and text alone")
      if not np.isfinite(scores[t]):
        raise ValueError(f"solution {i} step {t} scores {scores[t]}; scores must be finite, "
                         "check the verifier outputs")
      seen.append(float(scores[t]))
  return parents


def sibling_counts(step_texts: Sequence[Sequence[str]], step_scores: Sequence[Sequence[float]],
                   true_labels: Sequence[Sequence[bool]]) -> SiblingCounts:
  """Correct-vs-incorrect sibling pairs among the solutions of ONE question.

  step_texts / step_scores / true_labels: per solution, its steps (as the verifier
  read them, e.g. with their delimiter, so that equal text means equal input), their
  scores and their ground-truth correctness (same ragged lengths).

  Siblings are the distinct step texts that follow the same parent (the same
  preceding step texts). A step is a candidate only if all its preceding steps are
  correct, so a candidate is a correct step or a first wrong step, as in
  `first_error_steps`. Per parent, every (correct, incorrect) pair of distinct
  candidates counts once, whatever the number of samples that repeat them.
  """
  wins, pairs, parents = 0.0, 0, 0
  for siblings in _distinct_candidates(step_texts, step_scores, true_labels).values():
    good = np.asarray([np.mean(s) for s, ok in siblings.values() if ok], np.float64)
    bad = np.asarray([np.mean(s) for s, ok in siblings.values() if not ok], np.float64)
    if good.size and bad.size:
      diff_GxB = good[:, None] - bad[None, :]
      wins += float((diff_GxB > 0).sum() + 0.5 * (diff_GxB == 0).sum())
      pairs += diff_GxB.size
      parents += 1
  return SiblingCounts(wins, pairs, parents)


def _ratio_interval(wins_Q: np.ndarray, pairs_Q: np.ndarray, level: float, seed: int,
                    num_resamples: int = 2000) -> tuple[float, float]:
  """Percentile bootstrap (low, high) of sum(wins) / sum(pairs), resampling questions.

  Like `stats.bootstrap_interval`, but for a pooled ratio, which is not a mean of
  per-question values. Every question given must have pairs > 0.
  """
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, wins_Q.size, (num_resamples, wins_Q.size))
  ratios = wins_Q[picks].sum(axis=1) / pairs_Q[picks].sum(axis=1)
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(ratios, [tail, 100 - tail])
  return float(low), float(high)


def sibling_auroc(per_question: Sequence[SiblingCounts], level: float = 0.95,
                  seed: int = 0) -> dict:
  """Within-sibling AUROC pooled over parents and questions, with a bootstrap interval.

  per_question: `sibling_counts` of each question. Returns {"auroc", "low", "high",
  "pairs", "parents", "questions"}: auroc = sum(wins) / sum(pairs), the fraction of
  (correct, incorrect) sibling pairs ranked right (ties 1/2); low / high its `level`
  interval over questions with a pair (seeded); questions = how many had one. With no
  pair at all auroc, low and high are NaN.
  """
  used = [c for c in per_question if c.pairs]
  wins = np.asarray([c.wins for c in used], np.float64)
  pairs = np.asarray([c.pairs for c in used], np.float64)
  auroc_value = low = high = float("nan")
  if used:
    auroc_value = float(wins.sum() / pairs.sum())
    low, high = _ratio_interval(wins, pairs, level, seed)
  return {"auroc": auroc_value, "low": low, "high": high, "pairs": int(pairs.sum()),
          "parents": sum(c.parents for c in used), "questions": len(used)}


# ---------------------------------------------------------------------------
# ProcessBench-style first-error identification.


def _predicted_first_error(scores: Sequence[float], threshold: float) -> Optional[int]:
  """Index of the first step scoring below threshold, or None."""
  for i, v in enumerate(scores):
    if v < threshold:
      return i
  return None


def _harmonic_mean(a: float, b: float) -> float:
  if np.isnan(a) or np.isnan(b):
    return float("nan")
  return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def first_error_f1(step_scores: Sequence[Sequence[float]],
                   true_labels: Sequence[Sequence[bool]],
                   threshold: float = 0.5) -> dict:
  """ProcessBench metrics of "the first step scoring below threshold is the first error".

  step_scores / true_labels: per solution, a list of step scores / step correctness
  (same ragged lengths). A solution with a wrong step is a hit iff the predicted
  index equals the true first-wrong index (earlier and later both miss); a fully
  correct solution is a hit iff nothing is predicted.

  Returns {"error_accuracy", "correct_accuracy", "f1", "num_error", "num_correct",
  "threshold"}; f1 is the harmonic mean of the two accuracies (0 if both are 0).
  If a group is empty its accuracy is NaN, and so is f1: one number alone would
  reward a verifier that always (or never) flags an error.
  """
  _check_ragged(step_scores, true_labels)
  error_hits, correct_hits = [], []
  for s, t in zip(step_scores, true_labels):
    truth = _first_false(t)
    hit = _predicted_first_error(s, threshold) == truth
    (correct_hits if truth is None else error_hits).append(hit)
  error_acc = float(np.mean(error_hits)) if error_hits else float("nan")
  correct_acc = float(np.mean(correct_hits)) if correct_hits else float("nan")
  return {
      "error_accuracy": error_acc,
      "correct_accuracy": correct_acc,
      "f1": _harmonic_mean(error_acc, correct_acc),
      "num_error": len(error_hits),
      "num_correct": len(correct_hits),
      "threshold": float(threshold),
  }


def best_threshold(step_scores: Sequence[Sequence[float]],
                   true_labels: Sequence[Sequence[bool]],
                   candidates=np.linspace(0.05, 0.95, 19)) -> float:
  """The candidate threshold with the highest `first_error_f1` F1 (ties: the smallest).

  Meant for a validation split; needs both erroneous and fully correct solutions,
  since F1 is undefined otherwise.
  """
  candidates = np.sort(np.asarray(candidates, np.float64).ravel())
  if candidates.size == 0:
    raise ValueError("best_threshold needs at least one candidate threshold")
  f1s = [first_error_f1(step_scores, true_labels, c)["f1"] for c in candidates]
  if np.isnan(f1s[0]):
    raise ValueError("best_threshold needs solutions both with and without a wrong step; "
                     "F1 is undefined otherwise")
  return float(candidates[int(np.argmax(f1s))])


# ---------------------------------------------------------------------------
# Best-of-n accuracy over disjoint subsets of K samples.


@functools.partial(jax.jit, static_argnames=("rule",))
def _group_correct(ids_QxGxN, correct_QxGxN, scores_QxGxN, rule: str):
  """[Q, G] float32: 1 where the sample chosen in group (q, g) by `rule` is correct."""
  choose = lambda ids, scores: aggregation.choose_answer(ids, scores, rule)
  chosen_QxG = jax.vmap(jax.vmap(choose))(ids_QxGxN, scores_QxGxN)
  hit_QxG = jnp.take_along_axis(correct_QxGxN, chosen_QxG[..., None], axis=-1)[..., 0]
  return hit_QxG.astype(jnp.float32)


def subset_accuracy(answer_ids_QxK, correct_QxK, scores_QxK, n: int, rule: str) -> np.ndarray:
  """[Q] float64: per question, the mean over K // n disjoint groups of n samples of
  whether `rule` picks a correct sample in the group.

  answer_ids_QxK: int answer ids (aggregation.NO_ANSWER for unparsable samples);
  correct_QxK: bool per sample; scores_QxK: float verifier scores per sample, may be
  None for "majority". Groups are consecutive: samples [g*n, (g+1)*n); the last
  K % n samples are unused, so every point of a curve sees whole groups only.
  """
  if rule not in aggregation.ANSWER_RULES:
    raise ValueError(f"unknown answer rule {rule!r}; use one of {aggregation.ANSWER_RULES}")
  ids = np.asarray(answer_ids_QxK, np.int32)
  correct = np.asarray(correct_QxK, bool)
  if ids.ndim != 2 or correct.shape != ids.shape:
    raise ValueError(f"answer ids and correctness must both be [Q, K]; got {ids.shape} and "
                     f"{correct.shape}")
  num_q, k = ids.shape
  if scores_QxK is None:
    if rule != "majority":
      raise ValueError(f"rule {rule!r} needs verifier scores; only 'majority' works without")
    scores = np.ones(ids.shape, np.float32)
  else:
    scores = np.asarray(scores_QxK, np.float32)
    if scores.shape != ids.shape:
      raise ValueError(f"scores must be [Q, K] = {ids.shape}; got {scores.shape}")
    if not np.all(np.isfinite(scores)):
      raise ValueError("subset_accuracy: scores contain NaN or inf; check the verifier outputs")
  if not 1 <= n <= k:
    raise ValueError(f"n must be in [1, K={k}]; got {n}")
  groups = k // n
  to_groups = lambda a: a[:, :groups * n].reshape(num_q, groups, n)  # [Q, G, n]
  hits_QxG = _group_correct(to_groups(ids), to_groups(correct), to_groups(scores), rule)
  return np.asarray(hits_QxG, np.float64).mean(axis=1)


# ---------------------------------------------------------------------------
# Tables with confidence intervals.


def accuracy_table(per_question: dict[str, dict[int, np.ndarray]], level: float = 0.95,
                   seed: int = 0) -> dict[str, dict[int, tuple[float, float, float]]]:
  """{method: {n: (mean, low, high)}}: bootstrap intervals over questions.

  per_question: {method: {n: [Q] per-question accuracy}}, e.g. from `subset_accuracy`.
  The same seed is used for every cell so tables reproduce exactly.
  """
  return {method: {n: stats.bootstrap_interval(values, level=level, seed=seed)
                   for n, values in by_n.items()}
          for method, by_n in per_question.items()}


def format_accuracy_table(table: dict[str, dict[int, tuple[float, float, float]]]) -> str:
  """Plain text: header `method  N=1  N=4 ...`, one row per method (in the given order).

  Columns are the sorted union of n over methods; a method without some n shows '-'.
  """
  columns = sorted({n for by_n in table.values() for n in by_n})
  rows = [["method"] + [f"N={n}" for n in columns]]
  for method, by_n in table.items():
    rows.append([method] + [stats.format_interval(*by_n[n]) if n in by_n else "-"
                            for n in columns])
  widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
  return "\n".join(lines)
