"""Search through the real callbacks: tiny random policy and PRM (ttc.search.callbacks)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import samplers, sampling
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc.search import methods, tree_search
from ttc.search.callbacks import PolicyCallbacks, PrmCallbacks
from ttc.train import partitioning
from ttc.verifiers import reward_model, scoring

CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64)
EOS, DELIMITER = 1, 7
PROMPTS = [[5, 6, 7, 8], [9, 10], [3, 4, 5], [11]]


@pytest.fixture(scope="module")
def models():
  policy = Transformer(CONFIG)
  prm = reward_model.RewardModel(CONFIG)
  policy_params = partitioning.init_params(policy, jax.random.key(1))
  prm_params = partitioning.init_params(prm, jax.random.key(2))
  prm_params["params"]["value_head"]["kernel"] *= 100.0  # spread scores over (0, 1)
  return (PolicyCallbacks(policy, (DELIMITER,), EOS), PrmCallbacks(prm, chunk=4),
          policy_params, prm_params)


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


# DVTS differs from beam search only in the groups that selection uses (test_tree_search).
@pytest.mark.parametrize("name", ["beam_m2", "lookahead_k1_m2"])
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
