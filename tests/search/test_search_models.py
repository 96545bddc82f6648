"""Search through the real callbacks: tiny random policy and PRM (ttc.search.callbacks)."""

import dataclasses
import inspect
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers, sampling
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc.data import arith_task
from ttc.search import callbacks, methods, oracle, tree_search
from ttc.search.callbacks import PolicyCallbacks, PrmCallbacks
from ttc import partitioning, workdir
from ttc.verifiers import reward_model, scoring
from tests.search import stubs

CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64)
EOS, DELIMITER = 1, 7
PROMPTS = [[5, 6, 7, 8], [9, 10], [3, 4, 5], [11]]


@pytest.fixture(scope="module")
def models():
  return stubs.random_models(DELIMITER, EOS, CONFIG)


def _search(models, name, budget, seed=0, sampler=samplers.Temperature(jnp.float32(1.0))):
  policy, prm, policy_params, prm_params = models
  config = methods.make_config(name, budget, max_solution_tokens=24, max_step_tokens=8)
  tokens, lengths = sampling.left_pad(PROMPTS, 4)
  return tree_search.search(policy, prm, policy_params, prm_params, tokens, lengths,
                            jnp.ones((len(PROMPTS),), bool), jax.random.key(seed), sampler,
                            config)


def test_best_of_one_is_plain_sampling_scored_by_the_prm(models):
  policy, prm, policy_params, prm_params = models
  sampler = samplers.Temperature(jnp.float32(1.0))
  got = _search(models, "best_of_n", 1, seed=3, sampler=sampler)
  tokens, lengths = sampling.left_pad(PROMPTS, 4)
  # Round 0 samples with fold_in(rng, 0).
  plain = sampling.sample_n(policy.model, policy_params, tokens, lengths,
                            jax.random.fold_in(jax.random.key(3), 0), sampler, num_samples=1,
                            max_new_tokens=24, eos_id=EOS)
  np.testing.assert_array_equal(got.lengths_QxN[:, 0], plain.lengths_B)
  np.testing.assert_array_equal(got.tokens_QxNxW[:, 0, :24], plain.tokens_BxG)
  np.testing.assert_array_equal(got.complete_QxN[:, 0],
                                plain.stop_reason_B == sampling.StopReason.EOS)
  assert int(got.rounds) == 1
  # Its score is the PRM's whole-sequence score at the solution's last token.
  sequences = [p + np.asarray(plain.tokens_BxG[q, :plain.lengths_B[q]]).tolist()
               for q, p in enumerate(PROMPTS)]
  expected = scoring.score_solutions(prm.model, prm_params, sequences,
                                     [[len(s) - 1] for s in sequences])
  np.testing.assert_allclose(got.scores_QxN[:, 0], [e[0] for e in expected], atol=2e-5)
  np.testing.assert_array_equal(got.tokens_generated_Q, plain.lengths_B)
  np.testing.assert_array_equal(got.prm_tokens_Q, plain.lengths_B + np.array(
      [len(p) for p in PROMPTS]))


def test_beam_scores_equal_whole_sequence_scores_and_lookahead_k0_is_beam(models):
  policy, prm, policy_params, prm_params = models
  beam = _search(models, "beam_m2", 4)
  k0 = _search(models, "lookahead_k0_m2", 4)
  jax.tree.map(np.testing.assert_array_equal, k0, beam)
  assert int(beam.rounds) > 1
  tokens, lengths = np.asarray(beam.tokens_QxNxW), np.asarray(beam.lengths_QxN)
  sequences, ends = [], []
  for q, n in np.ndindex(lengths.shape):
    sequences.append(PROMPTS[q] + tokens[q, n, :lengths[q, n]].tolist())
    ends.append([len(sequences[-1]) - 1])
  # Forks and reorders moved the PRM's cache with the rows: the incremental score of
  # each final row equals scoring its whole text from scratch.
  expected = scoring.score_solutions(prm.model, prm_params, sequences, ends)
  np.testing.assert_allclose(np.asarray(beam.scores_QxN).ravel(), [e[0] for e in expected],
                             atol=2e-5)
  assert not bool(beam.prm_overflowed)
  generated = np.asarray(beam.tokens_generated_Q)
  # Forked rows share their parent's tokens, which were generated (and scored) once.
  assert np.all(generated >= lengths.max(1))
  prompt_lengths = np.array([len(p) for p in PROMPTS])
  np.testing.assert_array_equal(beam.prm_tokens_Q, generated + prompt_lengths)


# DVTS differs from beam search only in the groups that selection uses (test_tree_search);
# REBASE from particle filtering only in turning the same weights into counts. One
# parameter (~30 s) covers what the new rules add to the program on a mesh: comparing
# prefixes, drawing parents, counting distinct prefixes; beam_m2_vote also sums the
# scores of each prefix's copies after weighing each by its step's likelihood
# (lookahead_k1_m2 runs the plain rule "top").
@pytest.mark.parametrize("name", ["beam_m2_lik8_vote", "lookahead_k1_m2", "particles_dedup"])
def test_search_on_8_device_mesh_matches_one_device(models, name):
  policy, prm, policy_params, prm_params = models
  one = _search(models, name, 4)
  mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
  rules = partitioning.DEFAULT_RULES
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    _, policy_shardings = partitioning.abstract_params(policy.model, mesh, rules)
    _, prm_shardings = partitioning.abstract_params(prm.model, mesh, rules)
    sharded = (policy, prm, jax.device_put(policy_params, policy_shardings),
               jax.device_put(prm_params, prm_shardings))
    many = _search(sharded, name, 4)
  np.testing.assert_array_equal(many.tokens_QxNxW, one.tokens_QxNxW)
  np.testing.assert_array_equal(many.lengths_QxN, one.lengths_QxN)
  np.testing.assert_allclose(many.scores_QxN, one.scores_QxN, atol=1e-5)
  np.testing.assert_array_equal(many.tokens_generated_Q, one.tokens_generated_Q)
  np.testing.assert_array_equal(many.distinct_QxR, one.distinct_QxR)


def _contract(protocol) -> dict:
  """{verb: parameter names after self} of a callbacks Protocol."""
  return {name: list(inspect.signature(getattr(protocol, name)).parameters)[1:]
          for name in protocol.__dict__ if not name.startswith("_")}


def test_real_callbacks_and_stubs_fill_the_protocols_that_search_names():
  assert set(_contract(callbacks.SearchPolicy)) == {"prepare", "start", "step", "finished",
                                                    "finish", "take_rows"}
  assert set(_contract(callbacks.SearchVerifier)) == {"start", "score", "overflowed",
                                                      "take_rows"}
  policies = [PolicyCallbacks(Transformer(CONFIG), sampling.StopRule.of(EOS, (DELIMITER,))),
              stubs.StubPolicy(depth=2, num_choices=2)]
  verifiers = [PrmCallbacks(reward_model.RewardModel(CONFIG)),
               oracle.OracleCallbacks.for_problems(arith_task.ArithTask(), workdir.char_codec(),
                                                   []),
               callbacks.ConstantCallbacks(),
               stubs.StubPrm(num_choices=2, score_fn=lambda path_B, depth_B: depth_B / 2.0)]
  for protocol, implementations in ((callbacks.SearchPolicy, policies),
                                    (callbacks.SearchVerifier, verifiers)):
    for impl in implementations:
      assert isinstance(impl, protocol), (type(impl).__name__, protocol.__name__)
      hash(impl)  # a static argument of the jitted search
      for verb, params in _contract(protocol).items():
        got = list(inspect.signature(getattr(impl, verb)).parameters)
        assert got == params, (type(impl).__name__, verb, got, params)
  # The policy is no verifier (no score): the check can fail.
  assert not isinstance(policies[0], callbacks.SearchVerifier)
  hints = typing.get_type_hints(inspect.unwrap(tree_search.search))
  assert hints.get("policy") is callbacks.SearchPolicy
  assert hints.get("prm") is callbacks.SearchVerifier


def test_chat_stop_ids_end_a_solution_like_eos(models):
  policy, prm, policy_params, prm_params = models
  sampler = samplers.Temperature(jnp.float32(1.0))
  tokens, lengths = sampling.left_pad(PROMPTS, 4)
  plain = sampling.sample_n(policy.model, policy_params, tokens, lengths,
                            jax.random.fold_in(jax.random.key(3), 0), sampler, num_samples=1,
                            max_new_tokens=24, eos_id=EOS)
  # An end-of-turn id that this seed's plain samples emit: it must end those solutions.
  emitted = np.asarray(plain.tokens_BxG)[np.arange(24) < np.asarray(plain.lengths_B)[:, None]]
  stop = int(next(t for t in emitted if t not in (EOS, DELIMITER, 0)))
  # The end of turn is an end id beside EOS, as `Codec.stop_rule(chat=True, ...)` makes it.
  chat = PolicyCallbacks(policy.model, dataclasses.replace(policy.stops,
                                                           end_ids=(EOS, stop)))
  for name in ("best_of_n", "beam_m2"):
    got = _search((chat, prm, policy_params, prm_params), name, 4, seed=3, sampler=sampler)
    tokens_QxNxW, lengths_QxN = np.asarray(got.tokens_QxNxW), np.asarray(got.lengths_QxN)
    for q, n in np.ndindex(lengths_QxN.shape):
      row = tokens_QxNxW[q, n, :lengths_QxN[q, n]].tolist()
      ends = [i for i, t in enumerate(row) if t in (EOS, stop)]
      # Nothing follows the first end of the solution, and it counts as complete.
      assert ends == ([] if not ends else [len(row) - 1]), (name, row)
      assert bool(got.complete_QxN[q, n]) == bool(ends), (name, row)
    assert any(stop in tokens_QxNxW[q, n, :lengths_QxN[q, n]]
               for q, n in np.ndindex(lengths_QxN.shape)), name
