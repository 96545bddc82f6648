"""Step -> solution -> answer reductions, on hand-made cases with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.verifiers import aggregation as agg

# Three solutions; the third has only 2 real steps (the trailing 0.99 is padding).
STEPS = np.array([[0.9, 0.5, 0.8], [0.6, 0.7, 0.2], [0.4, 0.3, 0.99]], np.float32)
NUM_STEPS = np.array([3, 3, 2])


@pytest.mark.parametrize("how, expected", [
    ("last", [0.8, 0.2, 0.3]),
    ("min", [0.5, 0.2, 0.3]),
    ("prod", [0.9 * 0.5 * 0.8, 0.6 * 0.7 * 0.2, 0.4 * 0.3]),
    ("mean", [(0.9 + 0.5 + 0.8) / 3, 0.5, 0.35]),
])
def test_solution_scores_ignore_padding(how, expected):
  np.testing.assert_allclose(agg.solution_scores(STEPS, NUM_STEPS, how), expected, rtol=1e-6)


def test_a_solution_with_zero_steps_scores_zero_under_every_rule():
  for how in agg.STEP_AGGREGATIONS:
    got = agg.solution_scores(np.array([[0.7, 0.9]]), np.array([0]), how)
    assert float(got[0]) == 0.0, how


def test_weighted_majority_and_best_can_pick_three_different_answers():
  # Answer 7: one confident solution. Answer 3: two lukewarm ones (sum 1.0).
  # Answer 5: three weak ones (most votes, sum 0.6).
  ids = np.array([7, 3, 3, 5, 5, 5])
  scores = np.array([0.95, 0.5, 0.5, 0.2, 0.2, 0.2])
  pick = lambda how: int(ids[int(agg.choose_answer(ids, scores, how))])
  assert pick("best") == 7
  assert pick("weighted") == 3
  assert pick("majority") == 5


def test_unanswered_rows_are_never_chosen_while_an_answer_exists():
  ids = np.array([agg.NO_ANSWER, 4, agg.NO_ANSWER])
  scores = np.array([1.0, 0.01, 1.0])
  for how in agg.ANSWER_RULES:
    assert int(agg.choose_answer(ids, scores, how)) == 1, how


def test_choose_answer_runs_under_jit_and_vmap_over_problems():
  ids = jnp.array([[1, 2, 2], [4, 4, 9]])
  scores = jnp.array([[0.9, 0.5, 0.5], [0.1, 0.1, 0.9]])
  chosen = jax.jit(jax.vmap(lambda i, s: agg.choose_answer(i, s, "weighted")))(ids, scores)
  np.testing.assert_array_equal(chosen, [1, 2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5, 1.5])
def test_nan_inf_and_out_of_range_scores_are_rejected_with_their_location(bad):
  scores = STEPS.copy()
  scores[1, 2] = bad
  with pytest.raises(ValueError, match="solution 1 step 2"):
    agg.validate_step_scores(scores, NUM_STEPS)


def test_bad_values_in_padding_are_ignored_and_bad_shapes_rejected():
  scores = STEPS.copy()
  scores[2, 2] = np.nan  # past the 2 real steps of solution 2
  agg.validate_step_scores(scores, NUM_STEPS)
  with pytest.raises(ValueError, match="num_steps must be in"):
    agg.validate_step_scores(scores, np.array([3, 4, 1]))
  with pytest.raises(ValueError, match="unknown step aggregation"):
    agg.solution_scores(STEPS, NUM_STEPS, "max")
