"""The survival rules on hand-made values: top (beam, DVTS), particles, rebase, dedup, vote."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.search import selection


def _select_parents_before_dedup(value_QxN, alive_QxN, *, group_size, expand):
  """`selection.select_parents` as it was before deduplication, kept verbatim as the
  reference that dedup=False must reproduce bit for bit."""
  num_problems, num_rows = value_QxN.shape
  shape = (num_problems, num_rows // group_size, group_size)
  value = value_QxN.reshape(shape)
  alive = alive_QxN.reshape(shape)
  ranked = jnp.argsort(jnp.where(alive, -value, jnp.inf), axis=-1, stable=True)
  slot_rank = jnp.maximum(jnp.cumsum(alive, axis=-1) - 1, 0)
  source = jnp.take_along_axis(ranked, slot_rank // expand, axis=-1)
  within = jnp.where(alive, source, jnp.arange(group_size))
  group_start = (jnp.arange(shape[1]) * group_size)[None, :, None]
  return (within + group_start).reshape(num_problems, num_rows).astype(jnp.int32)


@pytest.mark.parametrize("group_size,expand", [(16, 4), (16, 1), (4, 4), (8, 3), (16, 16)])
def test_top_without_dedup_is_the_rule_before_dedup(group_size, expand):
  rng = np.random.default_rng(group_size * 10 + expand)
  # Values on a coarse grid, so ties (to the lower row) are common.
  value = jnp.asarray(rng.integers(0, 4, (64, 16)) / 4, jnp.float32)
  alive = jnp.asarray(rng.random((64, 16)) < 0.7)
  want = _select_parents_before_dedup(value, alive, group_size=group_size, expand=expand)
  got = selection.select_parents(value, alive, group_size=group_size, expand=expand)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(selection.choose_parents(
      "top", None, value, alive, alive, group_size=group_size, expand=expand,
      temperature=1.0), want)


def _rows(*solutions, width=6):
  """[1, N, W] tokens and [1, N] lengths of the given token lists (garbage past each)."""
  tokens = np.full((1, len(solutions), width), 77, np.int32)
  for n, s in enumerate(solutions):
    tokens[0, n, :len(s)] = s
  return jnp.asarray(tokens), jnp.asarray([[len(s) for s in solutions]])


def _dedup_parents(tokens, lengths, value, alive, group_size, expand):
  classes = selection.prefix_class(tokens, lengths, jnp.asarray(alive))
  candidates = selection.first_copies(classes, jnp.asarray(alive), group_size)
  parents = selection.select_parents(jnp.asarray(value, jnp.float32), jnp.asarray(alive),
                                     group_size=group_size, expand=expand,
                                     candidate_QxN=candidates)
  return np.asarray(classes), np.asarray(candidates), np.asarray(parents)


def test_prefixes_are_equal_exactly_by_length_and_tokens():
  # Rows 0 and 2 agree up to their lengths (garbage after differs); row 1 is row 0
  # one token longer; row 3 is finished.
  tokens, lengths = _rows([1, 2], [1, 2, 3], [1, 2], [1, 2])
  tokens = tokens.at[0, 2, 4].set(5)
  classes = selection.prefix_class(tokens, lengths, jnp.array([[True, True, True, False]]))
  np.testing.assert_array_equal(classes, [[0, 1, 0, 4]])


def test_dedup_never_drops_the_only_copy_of_a_prefix():
  # Rows 0-2 share a prefix and score best; row 3 alone has its prefix and scores worst.
  tokens, lengths = _rows([1, 2], [1, 2], [1, 2], [3])
  value, alive = [[0.9, 0.8, 0.7, 0.1]], [[True] * 4]
  _, candidates, parents = _dedup_parents(tokens, lengths, value, alive, 4, 2)
  np.testing.assert_array_equal(candidates, [[True, False, False, True]])
  np.testing.assert_array_equal(parents, [[0, 0, 3, 3]])  # keep 2, the worst one included
  plain = selection.select_parents(jnp.asarray(value), jnp.asarray(alive), group_size=4,
                                   expand=2)
  np.testing.assert_array_equal(plain, [[0, 0, 1, 1]])  # without dedup it is gone

  # All rows the same prefix: its first copy is the one candidate and takes every slot,
  # even where a later copy scores higher; the finished row 2 keeps its slot.
  tokens, lengths = _rows([4, 4], [4, 4], [4, 4], [4, 4])
  _, candidates, parents = _dedup_parents(tokens, lengths, [[0.2, 0.9, 0.5, 0.3]],
                                          [[True, True, False, True]], 4, 2)
  np.testing.assert_array_equal(candidates, [[True, False, False, False]])
  np.testing.assert_array_equal(parents, [[0, 0, 2, 0]])

  # A finished row does not make an unfinished one with its tokens a duplicate, and a
  # prefix in two DVTS groups keeps a copy in each.
  tokens, lengths = _rows([5], [5], [6], [5])
  _, candidates, parents = _dedup_parents(tokens, lengths, [[0.5, 0.5, 0.9, 0.5]],
                                          [[False, True, True, True]], 2, 2)
  np.testing.assert_array_equal(candidates, [[False, True, True, True]])
  np.testing.assert_array_equal(parents, [[0, 1, 2, 2]])


def test_dedup_cycles_over_fewer_distinct_prefixes_than_parents_best_first():
  # Keep 8 / 2 = 4 parents, but there are 2 distinct prefixes: slot j takes the
  # candidate ranked (j // 2) mod 2, so both prefixes get 4 rows, the better first.
  tokens, lengths = _rows(*([[1]] * 4 + [[2]] * 4))
  value = [[0.3] * 4 + [0.6] * 4]
  _, _, parents = _dedup_parents(tokens, lengths, value, [[True] * 8], 8, 2)
  np.testing.assert_array_equal(parents, [[4, 4, 0, 0, 4, 4, 0, 0]])


def test_dedup_keeps_every_distinct_prefix_it_has_room_for_on_random_rows():
  rng = np.random.default_rng(0)
  num_problems, num_rows, group_size, expand = 200, 8, 8, 2
  # Two tokens from three, or three: many duplicates.
  lengths = rng.integers(2, 4, (num_problems, num_rows))
  tokens = rng.integers(0, 3, (num_problems, num_rows, 4))
  alive = rng.random((num_problems, num_rows)) < 0.8
  value = rng.random((num_problems, num_rows)).astype(np.float32)
  classes, candidates, parents = _dedup_parents(jnp.asarray(tokens), jnp.asarray(lengths),
                                                value, alive, group_size, expand)
  distinct = selection.count_distinct(jnp.asarray(classes), jnp.asarray(parents),
                                      jnp.asarray(alive))
  for q in range(num_problems):
    live = np.flatnonzero(alive[q])
    prefixes = {(lengths[q, n], *tokens[q, n, :lengths[q, n]]): n
                for n in live[::-1]}  # reversed: each prefix maps to its first copy
    np.testing.assert_array_equal(np.flatnonzero(candidates[q]), sorted(prefixes.values()))
    # The survivors are the best min(D, parents wanted) distinct prefixes.
    want = min(len(prefixes), -(-len(live) // expand))
    survivors = set(classes[q, parents[q, live]])
    best = sorted(prefixes.values(), key=lambda n: (-value[q, n], n))[:want]
    assert survivors == set(best), q
    assert distinct[q] == want, q


def test_vote_keeps_the_step_many_rows_sampled_over_a_better_scored_single_one():
  # Three rows sampled step [1, 2] and score 0.4 each; one row sampled [3] and scores 0.9.
  # Beam search (keep 1 of 4) keeps [3]; the vote sums 1.2 against 0.9 and keeps [1, 2].
  tokens, lengths = _rows([1, 2], [3], [1, 2], [1, 2])
  value, alive = jnp.asarray([[0.4, 0.9, 0.4, 0.4]]), jnp.asarray([[True] * 4])
  classes = selection.prefix_class(tokens, lengths, alive)
  summed = selection.votes(value, classes, alive, 4)
  np.testing.assert_allclose(summed, [[1.2, 0.9, 1.2, 1.2]], rtol=1e-6)
  candidates = selection.first_copies(classes, alive, 4)
  top = lambda v: selection.select_parents(v, alive, group_size=4, expand=4,
                                           candidate_QxN=candidates)
  np.testing.assert_array_equal(top(value), [[1, 1, 1, 1]])
  np.testing.assert_array_equal(top(summed), [[0, 0, 0, 0]])


def test_votes_sum_each_prefix_within_its_group_over_unfinished_rows_on_random_rows():
  rng = np.random.default_rng(1)
  num_problems, num_rows, group_size = 100, 8, 4
  lengths = rng.integers(1, 3, (num_problems, num_rows))
  tokens = rng.integers(0, 2, (num_problems, num_rows, 3))
  alive = rng.random((num_problems, num_rows)) < 0.8
  value = rng.random((num_problems, num_rows)).astype(np.float32)
  classes = selection.prefix_class(jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(alive))
  got = np.asarray(selection.votes(jnp.asarray(value), classes, jnp.asarray(alive), group_size))
  prefix = lambda q, n: (lengths[q, n], *tokens[q, n, :lengths[q, n]])
  for q in range(num_problems):
    for n in range(num_rows):
      group = range(n - n % group_size, n - n % group_size + group_size)
      want = sum(value[q, m] for m in group if alive[q, m] and prefix(q, m) == prefix(q, n))
      np.testing.assert_allclose(got[q, n], want if alive[q, n] else 0.0, rtol=1e-6)


def _softmax_of_logits(value, candidate, temperature):
  """The resampling weights in float64, from the definition."""
  v = np.clip(np.asarray(value, np.float64), 1e-6, 1 - 1e-6)
  logits = np.where(candidate, np.log(v / (1 - v)) / temperature, -np.inf)
  w = np.exp(logits - logits.max())
  return w / w.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_particle_resampling_frequencies_match_the_softmax(temperature):
  value = np.array([0.2, 0.5, 0.7, 0.9, 0.9, 0.6, 0.4, 0.3], np.float32)
  alive = np.array([True, True, True, True, True, False, True, True])
  # Row 4 is a duplicate (not a candidate), row 5 is finished.
  candidate = alive & (np.arange(8) != 4)
  num_problems = 4000
  tile = lambda x: jnp.asarray(np.tile(x, (num_problems, 1)))
  parents = np.asarray(selection.resample_parents(
      jax.random.key(0), tile(value), tile(alive), tile(candidate), group_size=8,
      temperature=temperature))
  np.testing.assert_array_equal(parents[:, 5], 5)  # a finished row keeps its slot
  drawn = parents[:, alive].ravel()
  n = drawn.size  # 4000 problems x 7 slots, independent draws
  freq = np.bincount(drawn, minlength=8) / n
  p = _softmax_of_logits(value, candidate, temperature)
  # Each frequency is Binomial(n, p) / n: within 5 standard deviations
  # (sqrt(p (1 - p) / n) <= 0.003) but for a 1-in-3.5-million chance per row.
  np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)
  assert freq[4] == 0 and freq[5] == 0
  # Deterministic given the key, and another key draws otherwise.
  again = selection.resample_parents(jax.random.key(0), tile(value), tile(alive),
                                     tile(candidate), group_size=8, temperature=temperature)
  np.testing.assert_array_equal(again, parents)
  other = selection.resample_parents(jax.random.key(1), tile(value), tile(alive),
                                     tile(candidate), group_size=8, temperature=temperature)
  assert np.any(np.asarray(other) != parents)


def test_particles_handle_scores_of_exactly_zero_and_one_and_stay_in_their_group():
  value = jnp.array([[0.0, 1.0, 0.0, 0.0]])
  alive = jnp.array([[True, True, True, True]])
  candidate = jnp.array([[True, False, True, False]])
  parents = selection.resample_parents(jax.random.key(3), value, alive, candidate,
                                       group_size=2, temperature=1.0)
  # Each group of 2 has one candidate (row 1 is no candidate; its score is ignored).
  np.testing.assert_array_equal(parents, [[0, 0, 2, 2]])


def _largest_remainder(value, alive, candidate, temperature):
  """Reference counts in float64, or None when two remainders at the cut are too close
  for float32 to order them as float64 does."""
  slots = int(alive.sum())
  if not slots:
    return np.zeros(len(value), int)
  quota = slots * _softmax_of_logits(value, candidate, temperature)
  base = np.floor(quota).astype(int)
  remainder = np.where(candidate, quota - base, -1.0)
  leftover = slots - base.sum()
  order = np.argsort(-remainder, kind="stable")
  if 0 < leftover < candidate.sum() and (
      remainder[order[leftover - 1]] - remainder[order[leftover]] < 1e-4):
    return None
  counts = base.copy()
  counts[order[:leftover]] += 1
  return counts


def test_rebase_counts_are_largest_remainder_rounding_and_sum_to_the_slots():
  # By hand: at t = 1 the weights are the odds v / (1 - v): 4, 1, 1, 2 of 8. Four
  # slots: quotas 2, 0.5, 0.5, 1; the tied half slot goes to the lower row, 1.
  value = jnp.array([[0.8, 0.5, 0.5, 2 / 3]])
  alive = jnp.ones((1, 4), bool)
  counts = selection.rebase_counts(value, alive, alive, group_size=4, temperature=1.0)
  np.testing.assert_array_equal(counts, [[2, 1, 0, 1]])
  parents = selection.rebase_parents(value, alive, alive, group_size=4, temperature=1.0)
  np.testing.assert_array_equal(parents, [[0, 0, 3, 1]])  # best first, copies contiguous

  rng = np.random.default_rng(1)
  num_problems, num_rows, group_size = 300, 16, 8
  value = rng.random((num_problems, num_rows)).astype(np.float32)
  alive = rng.random((num_problems, num_rows)) < 0.75
  candidate = alive & (rng.random((num_problems, num_rows)) < 0.6)
  for temperature in (1.0, 0.3):
    args = (jnp.asarray(value), jnp.asarray(alive), jnp.asarray(candidate))
    counts = np.asarray(selection.rebase_counts(*args, group_size=group_size,
                                                temperature=temperature))
    parents = np.asarray(selection.rebase_parents(*args, group_size=group_size,
                                                  temperature=temperature))
    checked = 0
    for q, g in np.ndindex(num_problems, num_rows // group_size):
      rows = slice(g * group_size, (g + 1) * group_size)
      a, c = alive[q, rows], candidate[q, rows]
      if a.any() and not c.any():
        continue  # cannot happen in search: an unfinished row's first copy is a candidate
      assert counts[q, rows].sum() == a.sum()
      want = _largest_remainder(value[q, rows], a, c, temperature)
      if want is not None:
        np.testing.assert_array_equal(counts[q, rows], want, err_msg=f"{q} {g}")
        checked += 1
      own = parents[q, rows] - g * group_size
      np.testing.assert_array_equal(own[~a], np.flatnonzero(~a))  # finished keep their slot
      taken = own[a]
      np.testing.assert_array_equal(np.bincount(taken, minlength=group_size), counts[q, rows])
      # Best first (ties to the lower row), each parent's copies in one run.
      ranked = sorted(set(taken), key=lambda n: (-value[q, g * group_size + n], n))
      np.testing.assert_array_equal(taken, np.repeat(ranked, counts[q, rows][ranked]))
    assert checked > 500
