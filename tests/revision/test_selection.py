"""Tests for ttc/revision/selection.py: one answer from C revision chains of L attempts."""

import jax
import numpy as np
import pytest

from ttc.revision import selection

A, B, C, NONE = 0, 1, 2, selection.NO_ANSWER

# Three chains of three attempts; rows are chains, columns positions (oldest first).
IDS = [[A, A, B],
       [B, C, C],
       [A, A, A]]
SCORES = [[0.4, 0.4, 0.5],
          [0.9, 0.3, 0.3],
          [0.3, 0.3, 0.3]]


def _pair(chosen):
  return tuple(int(x) for x in chosen)


def test_hierarchical_and_flat_disagree_on_a_hand_worked_example():
  # hierarchical, within each chain (weighted):
  #   chain 0: A 0.4+0.4=0.8 > B 0.5 -> A; its best attempt at A: position 0, score 0.4
  #   chain 1: B 0.9 > C 0.3+0.3=0.6 -> B at position 0, score 0.9
  #   chain 2: A 0.9 -> A; best attempt position 0 (first of equal 0.3s), score 0.3
  # across the winners (weighted): A 0.4+0.3=0.7 < B 0.9 -> chain 1, position 0.
  # (Weighting a winner by its chain's vote sum instead would give A 0.8+0.9 > B 0.9.)
  assert _pair(selection.hierarchical(IDS, SCORES)) == (1, 0)
  # flat weighted over all nine: A 0.4+0.4+0.9=1.7, B 0.5+0.9=1.4, C 0.6 -> A, first at (0, 0).
  assert _pair(selection.flat_weighted(IDS, SCORES)) == (0, 0)
  # majority: A 5, B 2, C 2 -> A at (0, 0).
  assert _pair(selection.majority(IDS)) == (0, 0)
  for how, expected in [("hierarchical", (1, 0)), ("flat_weighted", (0, 0)),
                        ("majority", (0, 0))]:
    assert _pair(selection.choose(IDS, SCORES, how)) == expected


def test_a_chain_winner_is_represented_by_its_best_attempt():
  ids = [[B, A, A], [A, NONE, B]]
  scores = [[0.75, 0.25, 0.5], [0.125, 1.0, 0.25]]  # exact in binary: the tie is exact
  # chain 0: A 0.25+0.5 == B 0.75, tie to the lower row -> B (position 0), score 0.75.
  # chain 1: B 0.25 > A 0.125 (the unanswered 1.0 counts for nothing) -> B at 2, 0.25.
  # across: B 0.75+0.25 -> chain 0, position 0.
  assert _pair(selection.hierarchical(ids, scores)) == (0, 0)
  # A chain's best attempt need not be its first: here A wins chain 0 at position 2.
  ids = [[A, B, A], [B, B, B]]
  scores = [[0.1, 0.5, 0.6], [0.2, 0.2, 0.2]]
  # chain 0: A 0.7 > B 0.5 -> A, best at position 2 (0.6); chain 1: B, 0.2. Across: A.
  assert _pair(selection.hierarchical(ids, scores)) == (0, 2)
  # Flat: A 0.7 < B 0.5+0.6=1.1 -> B, first at (0, 1).
  assert _pair(selection.flat_weighted(ids, scores)) == (0, 1)


def test_unanswered_attempts_and_chains_lose():
  ids = [[NONE, NONE], [NONE, C]]
  scores = [[1.0, 1.0], [1.0, 0.01]]
  for how in selection.RULES:
    assert _pair(selection.choose(ids, scores, how)) == (1, 1)
  nothing = [[NONE, NONE], [NONE, NONE]]
  for how in selection.RULES:
    assert _pair(selection.choose(nothing, scores, how)) == (0, 0)


def test_rules_run_under_jit_and_vmap_over_problems():
  ids = np.stack([IDS, np.asarray(IDS)[::-1]])  # [problems, C, L]
  scores = np.stack([SCORES, np.asarray(SCORES)[::-1]])
  chains, positions = jax.jit(jax.vmap(selection.hierarchical))(ids, scores)
  assert chains.tolist() == [1, 1] and positions.tolist() == [0, 0]
  chains, positions = jax.jit(jax.vmap(selection.flat_weighted))(ids, scores)
  assert chains.tolist() == [0, 0] and positions.tolist() == [0, 0]


def test_bad_shapes_and_rules_are_refused():
  with pytest.raises(ValueError, match=r"\[chains, attempts\]"):
    selection.hierarchical([A, B], [0.1, 0.2])
  with pytest.raises(ValueError, match=r"\[chains, attempts\]"):
    selection.flat_weighted(IDS, [[0.1]])
  with pytest.raises(ValueError, match="unknown revision selection"):
    selection.choose(IDS, SCORES, "best")
