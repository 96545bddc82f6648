"""Search against stub models whose best path is known by construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers
from ttc.search import methods, selection, tree_search
from ttc.verifiers import aggregation
from tests.search.stubs import StubPolicy, StubPrm, paths

SAMPLER = samplers.Temperature(jnp.float32(1.0))


def _run(policy, prm, name, budget, num_problems=1, seed=0, live=None):
  config = methods.make_config(name, budget, max_solution_tokens=64, max_step_tokens=16)
  prompts = jnp.ones((num_problems, 2), jnp.int32)
  lengths = jnp.full((num_problems,), 2, jnp.int32)
  live = jnp.ones((num_problems,), bool) if live is None else jnp.asarray(live)
  return tree_search.search(policy, prm, None, None, prompts, lengths, live,
                            jax.random.key(seed), SAMPLER, config)


def _chosen_paths(result, num_choices):
  """The weighted best-of-N pick of each problem (answer = the path)."""
  found = paths(result, num_choices)
  picks = []
  for q in range(found.shape[0]):
    ids = np.where(np.asarray(result.complete_QxN[q]), found[q], aggregation.NO_ANSWER)
    picks.append(found[q, int(aggregation.choose_answer(ids, result.scores_QxN[q]))])
  return np.asarray(picks)


# 4 choices per step: the best path is all zeros. Every prefix on it scores 0.9,
# every other prefix 0.02 (so that many votes for one wrong answer weigh less than one
# right one): only search finds it reliably.
ON_PATH = StubPrm(4, lambda path, depth: jnp.where(path == 0, 0.9, 0.02))


def test_beam_search_finds_the_best_path_that_best_of_n_misses():
  policy = StubPolicy(depth=5, num_choices=4)  # the best path is 1 in 1024 solutions
  beam = _chosen_paths(_run(policy, ON_PATH, "beam_m4", 32, num_problems=8), 4)
  best_of_n = _chosen_paths(_run(policy, ON_PATH, "best_of_n", 32, num_problems=8), 4)
  np.testing.assert_array_equal(beam, 0)
  # Particle filtering resamples by odds 0.9 / 0.1 against 0.02 / 0.98: it too
  # keeps (almost) only the path's rows.
  particles = _chosen_paths(_run(policy, ON_PATH, "particles", 32, num_problems=8), 4)
  np.testing.assert_array_equal(particles, 0)
  # Best-of-32 finds a 1-in-1024 path with probability 3%.
  assert np.sum(best_of_n == 0) <= 1, best_of_n


def test_every_row_finishes_with_depth_steps_and_a_count_of_its_tokens():
  policy = StubPolicy(depth=4, num_choices=4)
  for name in ("best_of_n", "beam_m4", "lookahead_k1", "dvts_m4"):
    r = _run(policy, ON_PATH, name, 16, num_problems=2)
    assert np.all(np.asarray(r.complete_QxN))
    np.testing.assert_array_equal(r.lengths_QxN, 8)
    rows = methods.make_config(name, 16, max_solution_tokens=64, max_step_tokens=16).num_rows
    generated = np.asarray(r.tokens_generated_Q)
    if name == "best_of_n":
      np.testing.assert_array_equal(generated, rows * 8)
    else:  # step-by-step: N rows x 4 steps x 2 tokens, plus rollouts for lookahead
      assert np.all(generated >= rows * 8), (name, generated)
    np.testing.assert_array_equal(r.prm_tokens_Q, generated + 2)  # + the 2-token prompt
    if name == "best_of_n":  # nothing is selected, so no prefixes are counted
      np.testing.assert_array_equal(r.distinct_QxR, -1)


@pytest.mark.parametrize("name", ["particles", "rebase_t0.5", "beam_m4_dedup",
                                  "particles_t2_dedup", "beam_m4_vote"])
def test_new_selection_rules_finish_every_row_count_budgets_and_distinct_prefixes(name):
  policy = StubPolicy(depth=4, num_choices=4)
  # Problem 2 is batch padding: it runs no round.
  r = _run(policy, ON_PATH, name, 16, num_problems=3, live=[True, True, False])
  config = methods.make_config(name, 16, max_solution_tokens=64, max_step_tokens=16)
  assert config.num_rows == config.generations == 16  # no rollouts
  assert np.all(np.asarray(r.complete_QxN[:2]))
  np.testing.assert_array_equal(r.lengths_QxN[:2], 8)
  generated = np.asarray(r.tokens_generated_Q)
  assert np.all(generated[:2] >= 16 * 8) and generated[2] == 0
  np.testing.assert_array_equal(r.prm_tokens_Q[:2], generated[:2] + 2)
  # Every row takes 4 rounds: three leave 1..16 distinct prefixes unfinished, the
  # fourth none; rounds not run are -1, and so is every round of the padding problem.
  distinct = np.asarray(r.distinct_QxR)
  assert int(r.rounds) == 4 and distinct.shape == (3, config.max_rounds)
  assert np.all((distinct[:2, :3] >= 1) & (distinct[:2, :3] <= 16)), distinct[:, :5]
  np.testing.assert_array_equal(distinct[:2, 3], 0)
  np.testing.assert_array_equal(distinct[:2, 4:], -1)
  np.testing.assert_array_equal(distinct[2], -1)


def test_the_step_likelihood_steers_selection_where_the_prm_cannot():
  # A constant PRM ranks nothing; the policy reports choice 0 as likely (log-prob 0)
  # and choice 1 as unlikely (-5), while sampling both alike. Valued with the step's
  # likelihood, beam search keeps the rows that just wrote 0 (a sibling pair differs
  # by 8 x 5 / 2 = 20 in logit); without it, ties go to the lower rows. The last of
  # the 3 steps ends each row unselected, so the first two are what selection chose.
  policy = StubPolicy(depth=3, num_choices=2, choice_logprobs=(0.0, -5.0))
  constant = StubPrm(2, lambda path, depth: jnp.full(path.shape, 0.5))
  steered = paths(_run(policy, constant, "beam_m4_lik8", 16, num_problems=8), 2) // 2
  plain = paths(_run(policy, constant, "beam_m4", 16, num_problems=8), 2) // 2
  # About half of 16 rows write 0 each round, so 4 parents that did are almost sure;
  # by chance a quarter of the rows' first two choices are 0.
  assert np.mean(steered == 0) > 0.9 and np.mean(plain == 0) < 0.5, (steered, plain)


def test_the_likelihood_value_is_the_logit_shift_and_spares_rows_that_wrote_nothing():
  value_B = jnp.asarray([0.5, 0.8, 0.3, 0.0])
  logprobs_BxG = jnp.asarray([[-1.0, -3.0], [-0.5, 0.0], [0.0, 0.0], [0.0, 0.0]])
  lengths_B = jnp.asarray([2, 1, 0, 2])
  got = selection.with_step_likelihood(value_B, logprobs_BxG, lengths_B, 2.0)
  logit = lambda p: np.log(p) - np.log1p(-p)
  expected = [1 / (1 + np.exp(-(0.0 + 2 * -2.0))), 1 / (1 + np.exp(-(logit(0.8) + 2 * -0.5))),
              0.3, 1 / (1 + np.exp(-logit(1e-6)))]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_dedup_keeps_the_distinct_prefixes_that_beam_search_collapses():
  # Prefixes on the best path score 0.9, others 0.02: beam search keeps the top 4 of
  # 16, mostly copies of the path's first step; with dedup it keeps 4 distinct ones.
  policy = StubPolicy(depth=2, num_choices=4)
  beam = np.asarray(_run(policy, ON_PATH, "beam_m4", 16, num_problems=8).distinct_QxR)[:, 0]
  dedup = np.asarray(_run(policy, ON_PATH, "beam_m4_dedup", 16,
                          num_problems=8).distinct_QxR)[:, 0]
  assert np.all(dedup >= beam) and dedup.mean() > beam.mean() + 1, (beam, dedup)
  assert np.all(dedup <= 4)  # 4 choices, keep 16 / 4


# A trap for myopic search: after one step, choice 1 looks best (0.8) but every
# solution through it is wrong (0.1); choice 0 looks mediocre (0.5) but leads to 0.9.
def _trap(path, depth):
  first = jnp.where(depth == 1, path, path // 4)
  one_step = jnp.where(first == 1, 0.8, jnp.where(first == 0, 0.5, 0.3))
  two_steps = jnp.where(first == 0, 0.9, jnp.where(first == 1, 0.1, 0.2))
  return jnp.where(depth == 1, one_step, two_steps)


def test_lookahead_sees_past_the_trap_and_k0_is_beam_search():
  policy = StubPolicy(depth=2, num_choices=4)
  prm = StubPrm(4, _trap)
  # Keep 1 of 32 candidates: the first round samples both choices 0 and 1.
  beam = _run(policy, prm, "beam_m32", 32, num_problems=4)
  k0 = _run(policy, prm, "lookahead_k0_m32", 32, num_problems=4)
  k1 = _run(policy, prm, "lookahead_k1_m32", 64, num_problems=4)  # N = 64 // 2 = 32
  jax.tree.map(np.testing.assert_array_equal, k0, beam)  # exactly the same program output
  np.testing.assert_array_equal(_chosen_paths(beam, 4) // 4, 1)  # fell into the trap
  np.testing.assert_array_equal(_chosen_paths(k1, 4) // 4, 0)  # saw past it
  # The rollouts cost one more step of 2 tokens for each of the 32 first-round rows.
  np.testing.assert_array_equal(k1.tokens_generated_Q, beam.tokens_generated_Q + 32 * 2)


def test_dvts_keeps_n_over_m_independent_subtrees():
  # 64 first choices, so independent subtrees almost surely start differently.
  policy = StubPolicy(depth=3, num_choices=64)
  # A prefix scores by its first choice, so beam search's best root takes over.
  prm = StubPrm(64, lambda path, depth: (path // 64 ** (depth - 1)).astype(jnp.float32) / 64)
  dvts = paths(_run(policy, prm, "dvts_m4", 16), 64)[0]
  roots = dvts // 64 ** 2
  groups = roots.reshape(4, 4)  # N / M = 4 subtrees of M = 4 rows
  assert all(len(set(g)) == 1 for g in groups), groups  # each subtree has one root
  assert len(set(groups[:, 0])) == 4  # and the four roots differ
  beam = paths(_run(policy, prm, "beam_m4", 16), 64)[0]
  assert len(set(beam // 64 ** 2)) == 1


def test_greedy_best_of_n_rows_are_identical_and_budget_limits_hold():
  policy = StubPolicy(depth=3, num_choices=4, logits=(0.0, 2.0, 0.0, 0.0))
  config = methods.make_config("best_of_n", 4, max_solution_tokens=64, max_step_tokens=16)
  r = tree_search.search(policy, ON_PATH, None, None, jnp.ones((1, 2), jnp.int32),
                         jnp.array([2]), jnp.array([True]), jax.random.key(0),
                         samplers.Greedy(), config)
  np.testing.assert_array_equal(paths(r, 4), 1 * 16 + 1 * 4 + 1)  # argmax every step


def test_padding_problems_generate_nothing():
  policy = StubPolicy(depth=2, num_choices=4)
  config = methods.make_config("beam_m2", 4, max_solution_tokens=64, max_step_tokens=16)
  r = tree_search.search(policy, ON_PATH, None, None, jnp.ones((2, 2), jnp.int32),
                         jnp.array([2, 2]), jnp.array([True, False]), jax.random.key(0), SAMPLER,
                         config)
  np.testing.assert_array_equal(r.tokens_generated_Q, [4 * 4, 0])
  np.testing.assert_array_equal(r.prm_tokens_Q, [4 * 4 + 2, 0])
  assert not np.any(np.asarray(r.complete_QxN[1]))


@pytest.mark.parametrize("name,budget,rows,group,expand,k", [
    ("greedy", 16, 1, 1, 1, 0), ("best_of_n", 16, 16, 16, 1, 0), ("beam_m4", 16, 16, 16, 4, 0),
    ("beam_sqrt", 64, 64, 64, 8, 0), ("beam_sqrt", 32, 32, 32, 4, 0),
    ("lookahead_k3", 64, 16, 16, 4, 3), ("lookahead_k1", 4, 2, 2, 2, 1),
    ("lookahead_k3", 4, 1, 1, 1, 3),
    ("dvts_m4", 64, 64, 4, 4, 0), ("beam_m4", 2, 2, 2, 2, 0),
    ("particles", 16, 16, 16, 1, 0), ("rebase_t0.5_dedup", 8, 8, 8, 1, 0),
    ("lookahead_k1_dedup", 16, 8, 8, 4, 1), ("dvts_m4_dedup", 16, 16, 4, 4, 0),
    ("dvts_m4_lik8_vote", 16, 16, 4, 4, 0), ("lookahead_k1_lik0.5", 16, 8, 8, 4, 1)])
def test_method_configs(name, budget, rows, group, expand, k):
  c = methods.make_config(name, budget, max_solution_tokens=64, max_step_tokens=16)
  assert (c.num_rows, c.group_size, c.expand, c.lookahead_steps) == (rows, group, expand, k)
  # With one row there is nothing to select, so no rollouts run.
  assert c.generations == rows * (k + 1 if c.selects else 1) <= budget
  assert c.dedup == name.endswith("_dedup") and c.vote == name.endswith("_vote")
  assert c.likelihood_weight == {"dvts_m4_lik8_vote": 8.0,
                                 "lookahead_k1_lik0.5": 0.5}.get(name, 0.0)


@pytest.mark.parametrize("name,rule,temperature,dedup,vote", [
    ("particles", "particles", 1.0, False, False),
    ("particles_t0.5", "particles", 0.5, False, False),
    ("particles_t2_dedup", "particles", 2.0, True, False),
    ("rebase", "rebase", 1.0, False, False),
    ("rebase_t0.25_dedup", "rebase", 0.25, True, False),
    ("beam_sqrt_dedup", "top", 1.0, True, False),
    ("beam_m4_vote", "top", 1.0, False, True),
    ("dvts_m4_vote", "top", 1.0, False, True)])
def test_selection_rules_and_temperatures_parse_from_method_names(name, rule, temperature, dedup,
                                                                  vote):
  c = methods.make_config(name, 16, max_solution_tokens=64, max_step_tokens=16)
  assert (c.selection, c.selection_temperature, c.dedup, c.vote) == (rule, temperature, dedup,
                                                                     vote)
  assert c.selects and c.generations == 16


def test_unknown_method_is_one_clear_error():
  with pytest.raises(ValueError, match="unknown search method 'beam4'"):
    methods.make_config("beam4", 4, max_solution_tokens=8, max_step_tokens=4)
  with pytest.raises(ValueError, match="best_of_n_dedup: best-of-N has no selection rounds"):
    methods.make_config("best_of_n_dedup", 4, max_solution_tokens=8, max_step_tokens=4)
  with pytest.raises(ValueError, match="best_of_n_lik8: best-of-N has no selection rounds"):
    methods.make_config("best_of_n_lik8", 4, max_solution_tokens=8, max_step_tokens=4)
  with pytest.raises(ValueError, match="greedy_dedup: greedy decoding has no selection"):
    methods.make_config("greedy_dedup", 4, max_solution_tokens=8, max_step_tokens=4)
  with pytest.raises(ValueError, match="unknown search method 'beam_m4_vote_lik8'"):
    methods.make_config("beam_m4_vote_lik8", 4, max_solution_tokens=8, max_step_tokens=4)
  with pytest.raises(ValueError, match="likelihood_weight=-1.0 must be >= 0"):
    tree_search.SearchConfig(num_rows=4, group_size=4, expand=4, likelihood_weight=-1.0)
  with pytest.raises(ValueError, match="particles_vote: particles already weighs every copy"):
    methods.make_config("particles_vote", 4, max_solution_tokens=8, max_step_tokens=4)
  with pytest.raises(ValueError, match="vote is for selection 'top'"):
    tree_search.SearchConfig(num_rows=4, group_size=4, selection="rebase", vote=True)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    methods.make_config("particles_t0", 4, max_solution_tokens=8, max_step_tokens=4)
  with pytest.raises(ValueError, match="selection='greedy' must be one of"):
    tree_search.SearchConfig(num_rows=4, group_size=4, selection="greedy")
  with pytest.raises(ValueError, match="selection_temperature=0.0 > 0"):
    tree_search.SearchConfig(num_rows=4, group_size=4, selection="particles",
                             selection_temperature=0.0)


def test_slots_leave_every_row_a_full_step_and_too_few_are_refused():
  """Packed each round, the shared write slot is at most the cap; then each step in
  flight (the round's own, k rollout steps) needs a whole step more, the PRM's in
  whole chunks. Whole solutions stay in lockstep and need the cap only."""
  def make(name, budget, step=16, **slots):
    return methods.make_config(name, budget, max_solution_tokens=64, max_step_tokens=step,
                               **slots)

  beam = make("beam_m4", 16)
  assert (beam.num_slots, beam.prm_slots) == (64 + 16, 64 + 16)
  k3 = make("lookahead_k3", 64)
  assert (k3.num_slots, k3.prm_slots) == (64 + 4 * 16, 64 + 4 * 16)
  assert make("lookahead_k3", 4).num_slots == 64 + 16  # one row: nothing to select, no rollout
  assert make("beam_m4", 16, step=10).prm_slots == 64 + 16  # a step in whole chunks of 8
  best = make("best_of_n", 16)
  assert (best.num_slots, best.prm_slots) == (64, 64)
  assert tree_search.SearchConfig(num_rows=4, group_size=4).num_slots == 144 + 32
  with pytest.raises(ValueError, match="num_slots=79 is below the 80"):
    make("beam_m4", 16, num_slots=79)
  with pytest.raises(ValueError, match="prm_slots=70 is below the 80"):
    make("beam_m4", 16, prm_slots=70)
