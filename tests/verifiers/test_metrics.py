"""Verifier metrics against brute-force references and hand-built cases."""

import itertools

import numpy as np
import pytest

from ttc.verifiers import aggregation as agg
from ttc.verifiers import metrics

# ---------------------------------------------------------------------------
# AUROC.


def _pairwise_auroc(scores, labels):
  """P(positive > negative) + P(tie) / 2 by counting all pairs."""
  pos = [s for s, y in zip(scores, labels) if y]
  neg = [s for s, y in zip(scores, labels) if not y]
  wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_count_with_ties(seed):
  rng = np.random.default_rng(seed)
  size = int(rng.integers(5, 60))
  # Few distinct values, so many ties within and across classes.
  scores = rng.integers(0, 6, size) / 5
  labels = rng.random(size) < 0.4
  labels[:2] = [True, False]
  assert metrics.auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels))


def test_auroc_is_one_for_perfect_zero_for_inverse_and_half_for_all_ties():
  labels = [True, True, False, False, False]
  assert metrics.auroc([0.9, 0.8, 0.3, 0.2, 0.1], labels) == 1.0
  assert metrics.auroc([0.1, 0.2, 0.3, 0.8, 0.9], labels) == 0.0
  assert metrics.auroc([0.5] * 5, labels) == 0.5


@pytest.mark.parametrize("scores, labels, match", [
    ([0.1, 0.2], [True, True], "both classes"),
    ([0.1, 0.2], [False, False], "both classes"),
    ([0.1, np.nan], [True, False], "NaN"),
    ([0.1, np.inf], [True, False], "NaN or inf"),
    ([0.1, 0.2, 0.3], [True, False], "labels"),
])
def test_auroc_rejects_bad_inputs(scores, labels, match):
  with pytest.raises(ValueError, match=match):
    metrics.auroc(scores, labels)


# ---------------------------------------------------------------------------
# First-error steps.


def test_first_error_steps_keeps_steps_up_to_the_first_error_only():
  scores = [[0.9, 0.8, 0.2, 0.7], [0.6, 0.5], [0.3, 0.95]]
  labels = [[True, True, False, True], [True, True], [False, False]]
  got_scores, got_labels = metrics.first_error_steps(scores, labels)
  # Solution 0 loses its step 3 (after the error), solution 2 its step 1.
  np.testing.assert_allclose(got_scores, [0.9, 0.8, 0.2, 0.6, 0.5, 0.3])
  np.testing.assert_array_equal(got_labels, [True, True, False, True, True, False])
  assert got_labels.dtype == bool
  # The dropped 0.7 (labelled True after an error) would otherwise beat the 0.3.
  assert metrics.auroc(got_scores, got_labels) == 1.0


def test_first_error_steps_names_the_ragged_solution():
  with pytest.raises(ValueError, match="solution 1"):
    metrics.first_error_steps([[0.1], [0.2, 0.3]], [[True], [True]])


# ---------------------------------------------------------------------------
# Within-sibling AUROC.

# One question: after the shared correct step "a", the siblings "b" (correct) and "x"
# (wrong); at the root, "a" (correct) and "y" (wrong).
SIBLING_TEXTS = [["a", "b"], ["a", "x"], ["y", "z"]]
SIBLING_LABELS = [[True, True], [True, False], [False, False]]


def _one_question(scores):
  return metrics.sibling_counts(SIBLING_TEXTS, scores, SIBLING_LABELS)


@pytest.mark.parametrize("scores, expected", [
    ([[0.9, 0.8], [0.9, 0.2], [0.1, 0.7]], 1.0),  # both parents ranked right
    ([[0.1, 0.2], [0.1, 0.8], [0.9, 0.7]], 0.0),  # both inverted
    ([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]], 0.5),  # all ties
    ([[0.9, 0.2], [0.9, 0.8], [0.1, 0.7]], 0.5),  # root right, under "a" wrong
])
def test_sibling_counts_rank_pairs_of_one_parent(scores, expected):
  got = _one_question(scores)
  assert (got.pairs, got.parents) == (2, 2)
  assert got.wins / got.pairs == expected


def test_siblings_compare_within_a_parent_not_across_questions():
  # A hard question scored low throughout and an easy one scored high: pooled, the
  # correct steps lose to the wrong ones, yet each question ranks its siblings right.
  hard = ([["a"]] * 3 + [["y"]], [[0.2]] * 3 + [[0.1]], [[True]] * 3 + [[False]])
  easy = ([["a"]] + [["y"]] * 3, [[0.9]] + [[0.8]] * 3, [[True]] + [[False]] * 3)
  pooled = metrics.first_error_steps(hard[1] + easy[1], hard[2] + easy[2])
  assert metrics.auroc(*pooled) == pytest.approx(7 / 16)
  got = metrics.sibling_auroc([metrics.sibling_counts(*hard), metrics.sibling_counts(*easy)])
  assert (got["auroc"], got["pairs"], got["parents"]) == (1.0, 2, 2)


def test_a_parent_with_only_correct_children_adds_no_pairs():
  got = metrics.sibling_counts([["a", "b"], ["a", "c"], ["a", "d"]],
                               [[0.5, 0.9], [0.5, 0.1], [0.5, 0.4]],
                               [[True] * 2] * 3)
  assert (got.wins, got.pairs, got.parents) == (0.0, 0, 0)
  assert np.isnan(metrics.sibling_auroc([got])["auroc"])


def test_repeated_siblings_count_once_with_their_mean_score():
  # "b" sampled three times after "a" is one candidate, not three pairs against "x".
  texts = [["a", "b"], ["a", "b"], ["a", "b"], ["a", "x"]]
  labels = [[True, True]] * 3 + [[True, False]]
  got = metrics.sibling_counts(texts, [[0.5, 0.6], [0.5, 0.6], [0.5, 0.6], [0.5, 0.4]], labels)
  assert (got.wins, got.pairs, got.parents) == (1.0, 1, 1)
  # Scores of one candidate that differ by numerics are averaged: 0.39 vs 0.4 is a loss.
  got = metrics.sibling_counts(texts, [[0.5, 0.6], [0.5, 0.3], [0.5, 0.27], [0.5, 0.4]],
                               labels)
  assert (got.wins, got.pairs) == (0.0, 1)


def test_steps_after_the_first_error_are_not_candidates():
  # After the wrong "x", the "correct"-labelled "c" and the wrong "d" would make a pair
  # (ranked wrong); they are past the first error, so only ("b", "x") counts.
  texts = [["a", "b"], ["a", "x", "c"], ["a", "x", "d"]]
  labels = [[True, True], [True, False, True], [True, False, False]]
  got = metrics.sibling_counts(texts, [[0.5, 0.9], [0.5, 0.1, 0.1], [0.5, 0.1, 0.9]], labels)
  assert (got.wins, got.pairs, got.parents) == (1.0, 1, 1)


def test_sibling_counts_rejects_inconsistent_or_bad_inputs():
  with pytest.raises(ValueError, match="same prefix"):
    metrics.sibling_counts([["a"], ["a"]], [[0.1], [0.2]], [[True], [False]])
  with pytest.raises(ValueError, match="finite"):
    metrics.sibling_counts([["a"], ["x"]], [[np.nan], [0.2]], [[True], [False]])
  with pytest.raises(ValueError, match="solution 0 has 2 step texts"):
    metrics.sibling_counts([["a", "b"]], [[0.1]], [[True]])


def test_sibling_auroc_pools_pairs_over_questions_with_an_interval():
  right = metrics.SiblingCounts(wins=3.0, pairs=3, parents=1)
  wrong = metrics.SiblingCounts(wins=0.0, pairs=1, parents=1)
  none = metrics.SiblingCounts(wins=0.0, pairs=0, parents=0)
  got = metrics.sibling_auroc([right, wrong, none])
  # Pooled over pairs (3 / 4), not the mean of per-question AUROCs (1 / 2).
  assert got["auroc"] == 0.75
  assert (got["pairs"], got["parents"], got["questions"]) == (4, 2, 2)
  assert 0.0 <= got["low"] <= got["auroc"] <= got["high"] <= 1.0
  assert got == metrics.sibling_auroc([right, wrong, none])  # seeded
  empty = metrics.sibling_auroc([none])
  assert np.isnan(empty["auroc"]) and (empty["pairs"], empty["questions"]) == (0, 0)


@pytest.mark.parametrize("seed", range(3))
def test_sibling_auroc_of_a_constant_verifier_is_one_half(seed):
  # Random trees of steps over a small alphabet, so parents and siblings repeat.
  rng = np.random.default_rng(seed)
  questions = []
  for _ in range(4):
    texts = [list(rng.choice(list("abc"), int(rng.integers(1, 5)))) for _ in range(16)]
    labels = [list(rng.random(len(t)) < 0.6) for t in texts]
    # Labels must be a function of (prefix, step): take those of the first occurrence.
    first = {}
    labels = [[first.setdefault((tuple(t[:i]), t[i]), y[i]) for i in range(len(t))]
              for t, y in zip(texts, labels)]
    questions.append(metrics.sibling_counts(texts, [[0.5] * len(t) for t in texts], labels))
  got = metrics.sibling_auroc(questions)
  assert got["pairs"] > 0
  assert (got["auroc"], got["low"], got["high"]) == (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------
# ProcessBench F1.

HAND_SCORES = [
    [0.9, 0.8, 0.2, 0.1],  # error at 2, predicted 2: hit
    [0.9, 0.3, 0.2],       # error at 2, predicted 1: early, miss
    [0.9, 0.7, 0.2],       # error at 1, predicted 2: late, miss
    [0.9, 0.4, 0.8],       # correct, predicted 1: false alarm, miss
    [0.9, 0.8],            # correct, nothing predicted: hit
]
HAND_LABELS = [
    [True, True, False, False],
    [True, True, False],
    [True, False, True],
    [True, True, True],
    [True, True],
]


def test_first_error_f1_on_hand_built_cases():
  got = metrics.first_error_f1(HAND_SCORES, HAND_LABELS, threshold=0.5)
  assert got["num_error"] == 3 and got["num_correct"] == 2
  assert got["error_accuracy"] == pytest.approx(1 / 3)
  assert got["correct_accuracy"] == pytest.approx(1 / 2)
  assert got["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
  assert got["threshold"] == 0.5


def test_first_error_f1_is_nan_when_a_group_is_empty_and_zero_when_both_miss():
  only_errors = metrics.first_error_f1(HAND_SCORES[:3], HAND_LABELS[:3])
  assert np.isnan(only_errors["correct_accuracy"]) and np.isnan(only_errors["f1"])
  assert only_errors["error_accuracy"] == pytest.approx(1 / 3)
  both_miss = metrics.first_error_f1(HAND_SCORES[1:4], HAND_LABELS[1:4])
  assert both_miss["error_accuracy"] == 0 and both_miss["correct_accuracy"] == 0
  assert both_miss["f1"] == 0.0


def test_best_threshold_picks_the_smallest_separating_threshold():
  # Correct steps score 0.6, wrong ones 0.45: only thresholds in (0.45, 0.6] are exact.
  scores = [[0.6, 0.6, 0.45], [0.45, 0.6], [0.6, 0.6], [0.6]]
  labels = [[True, True, False], [False, True], [True, True], [True]]
  threshold = metrics.best_threshold(scores, labels)
  assert threshold == pytest.approx(0.5)
  assert metrics.first_error_f1(scores, labels, threshold)["f1"] == 1.0
  assert metrics.first_error_f1(scores, labels, 0.3)["f1"] < 1.0


def test_best_threshold_needs_both_groups():
  with pytest.raises(ValueError, match="both"):
    metrics.best_threshold([[0.9, 0.2]], [[True, False]])


# ---------------------------------------------------------------------------
# Subset accuracy.


def _reference_choice(ids, scores, rule):
  """Plain-python choose_answer: highest value, ties to the lowest index, NO_ANSWER last."""
  best_i, best_v = 0, None
  for i, answer in enumerate(ids):
    if answer == agg.NO_ANSWER:
      continue
    if rule == "best":
      value = scores[i]
    else:
      same = [j for j in range(len(ids)) if ids[j] == answer]
      value = sum(scores[j] for j in same) if rule == "weighted" else len(same)
    if best_v is None or value > best_v:
      best_i, best_v = i, value
  return best_i


def _reference_subset_accuracy(ids, correct, scores, n, rule):
  out = []
  for q in range(ids.shape[0]):
    hits = []
    for g in range(ids.shape[1] // n):
      sl = slice(g * n, (g + 1) * n)
      chosen = _reference_choice(list(ids[q, sl]), list(scores[q, sl]), rule)
      hits.append(float(correct[q, sl][chosen]))
    out.append(np.mean(hits))
  return np.array(out)


def _random_samples(seed, num_q=6, k=12):
  rng = np.random.default_rng(seed)
  ids = rng.integers(-1, 3, (num_q, k)).astype(np.int32)  # -1 is NO_ANSWER
  ids[0] = agg.NO_ANSWER  # one question with no parsable sample at all
  # Correctness independent of the id, so choosing the wrong row of an answer shows.
  correct = rng.random((num_q, k)) < 0.5
  # Multiples of 1/8 sum exactly in float32, so reference and jnp agree on ties.
  scores = rng.integers(0, 9, (num_q, k)) / 8
  return ids, correct, scores


@pytest.mark.parametrize("rule", agg.ANSWER_RULES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 12])
def test_subset_accuracy_matches_python_loop(rule, n):
  ids, correct, scores = _random_samples(seed=n)
  got = metrics.subset_accuracy(ids, correct, scores, n, rule)
  assert got.shape == (ids.shape[0],)
  np.testing.assert_allclose(got, _reference_subset_accuracy(ids, correct, scores, n, rule))


def test_subset_accuracy_with_n_one_is_the_per_sample_accuracy():
  ids, correct, scores = _random_samples(seed=7)
  got = metrics.subset_accuracy(ids, correct, scores, 1, "weighted")
  np.testing.assert_allclose(got, correct.mean(axis=1))


def test_subset_accuracy_majority_without_scores():
  ids = np.array([[4, 4, 9, agg.NO_ANSWER]])
  correct = np.array([[True, False, False, True]])
  # Answer 4 wins the vote; its first row (index 0) is correct.
  np.testing.assert_allclose(metrics.subset_accuracy(ids, correct, None, 4, "majority"), [1.0])
  with pytest.raises(ValueError, match="needs verifier scores"):
    metrics.subset_accuracy(ids, correct, None, 4, "weighted")


@pytest.mark.parametrize("n", [0, 5])
def test_subset_accuracy_rejects_n_outside_one_to_k(n):
  ids, correct, scores = _random_samples(seed=0, k=4)
  with pytest.raises(ValueError, match="n must be in"):
    metrics.subset_accuracy(ids, correct, scores, n, "best")


# ---------------------------------------------------------------------------
# Tables.


def test_accuracy_table_and_its_text_form():
  rng = np.random.default_rng(0)
  per_question = {
      "majority": {1: rng.random(20), 4: rng.random(20)},
      "prm-weighted": {16: rng.random(20), 1: rng.random(20)},
  }
  table = metrics.accuracy_table(per_question)
  mean, low, high = table["majority"][4]
  assert mean == pytest.approx(per_question["majority"][4].mean())
  assert low <= mean <= high
  text = metrics.format_accuracy_table(table)
  lines = text.splitlines()
  assert lines[0].split() == ["method", "N=1", "N=4", "N=16"]
  assert lines[1].startswith("majority") and lines[2].startswith("prm-weighted")
  for method, by_n in table.items():
    for cell in by_n.values():
      assert metrics.stats.format_interval(*cell) in text
  # Aligned columns: every cell of a column starts at the header's offset.
  start = lines[0].index("N=4")
  assert lines[1][start:].startswith(metrics.stats.format_interval(*table["majority"][4]))
  assert lines[2][start:].startswith("-")
