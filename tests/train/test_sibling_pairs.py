"""Sibling pairs for the PRM's ranking loss: which steps pair, how a batch carries them,
and the loss they feed."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ttc.train import reward_training, sibling_pairs


def _examples(solutions):
  """Arrays of `reward_training.Examples` from (question, [step token lists], [labels]).

  Every question's prompt is the token 9 and the question id, so prompts differ
  across questions."""
  rows = []
  for question, steps, labels in solutions:
    tokens, ends = [9, question], []
    for step in steps:
      tokens += step
      ends.append(len(tokens) - 1)
    rows.append((tokens, ends, labels, question))
  length, width = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
  tokens = np.zeros((len(rows), length), np.int32)
  index = np.zeros((len(rows), width), np.int32)
  label = np.zeros((len(rows), width), np.float32)
  weight = np.zeros((len(rows), width), np.float32)
  for m, (t, e, l, _) in enumerate(rows):
    tokens[m, :len(t)], index[m, :len(e)], label[m, :len(l)], weight[m, :len(l)] = t, e, l, 1
  return tokens, index, label, weight, np.asarray([r[3] for r in rows], np.int32)


def _as_set(pairs):
  return {(int(a), int(sa), int(b), int(sb), round(float(t), 6)) for a, sa, b, sb, t in zip(
      pairs.row_a_P, pairs.slot_a_P, pairs.row_b_P, pairs.slot_b_P, pairs.target_P)}


def test_pairs_are_distinct_next_steps_of_one_prefix_with_different_labels():
  pairs = sibling_pairs.find(*_examples([
      (1, [[5, 0], [6, 0]], [0.5, 1.0]),   # row 0
      (1, [[5, 0], [7, 0]], [0.5, 0.0]),   # row 1: sibling of row 0's second step
      (1, [[5, 0], [6, 0]], [0.5, 0.5]),   # row 2: repeats row 0, its label averages in
      (1, [[4, 0], [6, 0]], [0.25, 1.0]),  # row 3: another first step; its second step
                                           #   follows another prefix, so pairs with none
      (1, [[5, 0], [8, 0]], [0.5, 0.75]),  # row 4: equal to row 0's mean label: no pair
      (2, [[4, 0], [7, 0]], [1.0, 1.0]),   # row 5: another question pairs with nothing
  ]))
  # First steps: [5, 0] (rows 0, 1, 2, 4; label 0.5) vs [4, 0] (row 3; 0.25).
  # Second steps after [5, 0]: [6, 0] (rows 0, 2: mean 0.75), [7, 0] (0.0), [8, 0] (0.75).
  assert _as_set(pairs) == {(0, 0, 3, 0, 0.625), (0, 1, 1, 1, 0.875), (1, 1, 4, 1, 0.125)}


def test_a_batch_carries_only_pairs_whose_rows_it_holds_at_their_places():
  pairs = sibling_pairs.Pairs(*(np.asarray(x, np.int32) for x in ([0, 2, 5], [0, 1, 2],
                                                                  [1, 3, 6], [0, 1, 2])),
                              np.asarray([0.9, 0.2, 0.6], np.float32))
  rows = np.asarray([3, 2, 7, 0, 1, 2])  # row 2 twice: its first place (1) counts
  batch = sibling_pairs.in_batch(pairs, rows, num_examples=8, max_pairs=4)
  np.testing.assert_array_equal(batch["pair_a_P"], [3, 1, 0, 0])
  np.testing.assert_array_equal(batch["pair_b_P"], [4, 0, 0, 0])
  np.testing.assert_array_equal(batch["pair_a_slot_P"], [0, 1, 0, 0])
  np.testing.assert_allclose(batch["pair_target_P"], [0.9, 0.2, 0, 0])
  np.testing.assert_array_equal(batch["pair_weight_P"], [1, 1, 0, 0])
  # More pairs than slots: the first ones stay.
  fewer = sibling_pairs.in_batch(pairs, rows, num_examples=8, max_pairs=1)
  assert fewer["pair_a_P"].tolist() == [3] and fewer["pair_weight_P"].tolist() == [1]


def test_the_loss_is_bradley_terry_on_logit_differences_over_real_pairs():
  logits_MxS = jnp.asarray([[2.0, -1.0], [0.5, 3.0]])
  batch = {"pair_a_P": jnp.asarray([0, 0, 1]), "pair_a_slot_P": jnp.asarray([0, 1, 0]),
           "pair_b_P": jnp.asarray([1, 1, 0]), "pair_b_slot_P": jnp.asarray([1, 0, 0]),
           "pair_target_P": jnp.asarray([0.75, 0.9, 0.1]),
           "pair_weight_P": jnp.asarray([1.0, 1.0, 0.0])}
  loss, count, right = sibling_pairs.loss(logits_MxS, batch)
  expected = [optax.sigmoid_binary_cross_entropy(jnp.asarray(d), jnp.asarray(t))
              for d, t in ((2.0 - 3.0, 0.75), (-1.0 - 0.5, 0.9))]
  assert float(loss) == pytest.approx(float(np.mean(expected)), rel=1e-6)
  # Both real pairs are ranked against their labels; the padding pair does not count.
  assert float(count) == 2 and float(right) == 0


def test_question_batches_keep_each_question_together_and_cover_an_epoch():
  question_M = np.asarray([4, 4, 4, 9, 9, 2, 2, 2, 2, 7])
  epoch = np.concatenate([reward_training.batch_rows(s, 5, 10, seed=1, group_M=question_M)
                          for s in range(2)])
  assert sorted(epoch) == list(range(10))
  runs = [question_M[epoch][0]] + [q for p, q in zip(question_M[epoch], question_M[epoch][1:])
                                   if q != p]
  assert sorted(runs) == [2, 4, 7, 9]  # each question is one run of consecutive rows
  # A pure function of the step: the second batch alone equals its slice, and the next
  # epoch orders the questions afresh.
  np.testing.assert_array_equal(
      reward_training.batch_rows(1, 5, 10, seed=1, group_M=question_M), epoch[5:])
  orders = {tuple(question_M[reward_training.batch_rows(e, 10, 10, seed=1, group_M=question_M)])
            for e in range(6)}
  assert len(orders) > 1
