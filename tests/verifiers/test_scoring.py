"""Reward model scoring: incremental (own KV cache, rows forked) == whole prefixes from scratch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc.decoding import sampling
from ttc.models.config import ModelConfig
from ttc.models.transformer import Transformer
from ttc import partitioning
from ttc.verifiers import reward_model, scoring

CONFIG = ModelConfig(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64)


def _model_and_params():
  model = reward_model.RewardModel(CONFIG)
  params = partitioning.init_params(model, jax.random.key(0))
  # A large head spreads the scores over (0, 1), so a wrong token or position shows.
  head = params["params"]["value_head"]
  head["kernel"] = head["kernel"] * 300.0
  return model, params


def test_backbone_is_the_policy():
  model, params = _model_and_params()
  policy = Transformer(CONFIG)
  policy_params = partitioning.init_params(policy, jax.random.key(7))
  params = reward_model.with_backbone(params, policy_params)
  tokens = jnp.asarray([[3, 4, 5, 6]])
  positions = jnp.arange(4)[None]
  hidden, _ = policy.apply(policy_params, tokens, positions, method=Transformer.hidden_states)
  head = params["params"]["value_head"]
  expected = hidden @ head["kernel"][:, 0] + head["bias"][0]
  logits, _ = model.apply(params, tokens, positions)
  np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_incremental_scores_equal_from_scratch_with_forks():
  model, params = _model_and_params()
  rng = np.random.default_rng(0)
  prompts = [[0, 5, 9, 4, 7], [0, 8, 3]]
  num_rows, width, chunk = 3, 6, 4
  tokens, lengths = sampling.left_pad(prompts, 8)
  state = scoring.start(model, params, tokens, lengths, num_rows=num_rows, max_tokens=64)
  rows = [list(prompts[b // num_rows]) for b in range(len(prompts) * num_rows)]
  last_scores = np.zeros(len(rows))
  parents = [None, np.array([[0, 0, 2], [2, 1, 1]]), np.array([[1, 2, 0], [0, 0, 0]])]
  step_lengths = [np.array([6, 1, 3, 5, 2, 4]), np.array([0, 5, 2, 6, 0, 1]),
                  np.array([3, 3, 0, 2, 6, 5])]
  generated = 0
  for parent, step_len in zip(parents, step_lengths):
    if parent is not None:
      state = scoring.take_rows(state, jnp.asarray(parent))
      flat = (np.arange(2)[:, None] * num_rows + parent).ravel()
      rows = [list(rows[i]) for i in flat]
      last_scores = last_scores[flat]
    step = rng.integers(3, 32, (len(rows), width))
    state = scoring.score_step(model, params, state, jnp.asarray(step, jnp.int32),
                               jnp.asarray(step_len), chunk=chunk)
    generated += int(step_len.sum())
    for b, n in enumerate(step_len):
      rows[b] += step[b, :n].tolist()
    # From scratch: every row's whole sequence, scored at its last token.
    scratch = scoring.score_solutions(model, params, rows, [[len(r) - 1] for r in rows],
                                      batch_size=8)
    expected = np.where(step_len > 0, [s[0] for s in scratch], last_scores)
    np.testing.assert_allclose(np.asarray(state.score_B), expected, atol=2e-5)
    last_scores = expected
  assert np.std(last_scores) > 0.05  # the comparison is not between constants
  assert not bool(state.overflowed)
  # The PRM ran each prompt once and each generated token once...
  assert int(state.tokens_scored) == sum(map(len, prompts)) + generated
  # ... where rescoring whole prefixes after every step runs their running sum.
  assert int(state.tokens_scored) < 0.6 * (3 * sum(map(len, prompts)) * num_rows + generated)


def test_steps_that_do_not_fit_are_flagged():
  model, params = _model_and_params()
  tokens, lengths = sampling.left_pad([[0, 5, 9]], 4)
  state = scoring.start(model, params, tokens, lengths, num_rows=2, max_tokens=8)
  state = scoring.score_step(model, params, state, jnp.full((2, 12), 5, jnp.int32),
                             jnp.asarray([12, 3]), chunk=4)
  assert bool(state.overflowed)
  assert int(state.tokens_scored) == 3 + 8 + 3


def test_token_logprobs_are_each_next_tokens_log_softmax_and_zero_elsewhere():
  policy = Transformer(CONFIG)
  params = partitioning.init_params(policy, jax.random.key(2))
  rows = [[3, 4, 5, 6, 7], [8, 9, 10]]
  got = scoring.score_solutions(policy, params, rows, [list(range(len(r))) for r in rows],
                                batch_size=2, per_token=scoring.token_logprobs)
  for row, values in zip(rows, got):
    logits, _ = policy.apply(params, jnp.asarray([row]), jnp.arange(len(row))[None])
    expected = jax.nn.log_softmax(logits[0, :-1], axis=-1)[jnp.arange(len(row) - 1),
                                                           jnp.asarray(row[1:])]
    assert values[0] == 0.0
    np.testing.assert_allclose(values[1:], expected, atol=1e-5)
  # Padding reads 0.
  padded = scoring.token_logprobs(policy, params, jnp.asarray([[3, 4, 0, 0]]),
                                  jnp.asarray([2]))
  np.testing.assert_array_equal(np.asarray(padded)[0, 2:], 0.0)


def test_score_solutions_rejects_indices_outside_the_sequence():
  model, params = _model_and_params()
  with pytest.raises(ValueError, match="outside"):
    scoring.score_solutions(model, params, [[0, 4, 5]], [[3]], batch_size=2)
